// Hostile manifests, one per library: HOSTILE_CASE (a compile definition, see
// CMakeLists.txt) picks what is wrong. Each must be refused at load with one line naming
// the library and the field; none may crash `plugins` or `describe`, or hand a plugin a
// default that breaks its own declaration.
#include <cmath>

#include "handmade.h"

namespace {

constexpr double kFree = NAN;  // unbounded

// A sound parameter, placed first so that the bad one is not params[0].
#define GOOD_PARAM {"width", "int", "8", 1, kFree, 0, 0, nullptr, "a sound parameter"}

// (Unused by the cases that put NULL in their place.)
[[maybe_unused]] const char* kName = "hostile";
[[maybe_unused]] const char* kVersion = "1.0.0";
[[maybe_unused]] const char* kDescription = "hostile on purpose";

#if HOSTILE_CASE == 1  // null_name
const mfglab_param kParams[] = {GOOD_PARAM};
#define NAME_FIELD nullptr
#elif HOSTILE_CASE == 2  // null_version
const mfglab_param kParams[] = {GOOD_PARAM};
#define VERSION_FIELD nullptr
#elif HOSTILE_CASE == 3  // null_description
const mfglab_param kParams[] = {GOOD_PARAM};
#define DESCRIPTION_FIELD nullptr
#elif HOSTILE_CASE == 4  // null_param_name
const mfglab_param kParams[] = {GOOD_PARAM, {nullptr, "number", "1", kFree, kFree, 0, 0, nullptr, "no name"}};
#elif HOSTILE_CASE == 5  // null_param_type
const mfglab_param kParams[] = {GOOD_PARAM, {"scale", nullptr, "1", kFree, kFree, 0, 0, nullptr, "no type"}};
#elif HOSTILE_CASE == 6  // null_param_default
const mfglab_param kParams[] = {GOOD_PARAM, {"scale", "number", nullptr, kFree, kFree, 0, 0, nullptr, "no default"}};
#elif HOSTILE_CASE == 7  // min_above_max
const mfglab_param kParams[] = {GOOD_PARAM, {"count", "int", "3", 10, 1, 0, 0, nullptr, "empty range"}};
#elif HOSTILE_CASE == 8  // default_out_of_bounds
const mfglab_param kParams[] = {GOOD_PARAM, {"count", "int", "11", 1, 10, 0, 0, nullptr, "default too large"}};
#elif HOSTILE_CASE == 9  // default_not_a_choice
const mfglab_param kParams[] = {GOOD_PARAM, {"mode", "string", "\"medium\"", kFree, kFree, 0, 0, "fast|slow", "bad default"}};
#elif HOSTILE_CASE == 10  // default_not_json
const mfglab_param kParams[] = {GOOD_PARAM, {"scale", "number", "1.5x", kFree, kFree, 0, 0, nullptr, "not JSON"}};
#elif HOSTILE_CASE == 11  // duplicate_param
const mfglab_param kParams[] = {GOOD_PARAM, {"scale", "number", "1", kFree, kFree, 0, 0, nullptr, "first"},
                                {"scale", "number", "2", kFree, kFree, 0, 0, nullptr, "second"}};
#elif HOSTILE_CASE == 12  // unknown_type
const mfglab_param kParams[] = {GOOD_PARAM, {"scale", "float", "1", kFree, kFree, 0, 0, nullptr, "no such type"}};
#elif HOSTILE_CASE == 13  // field_unknown_param: a condition on a parameter it does not declare
const mfglab_param kParams[] = {GOOD_PARAM};
#define FIELDS_FIELD "score,value(mode=fast)"
#elif HOSTILE_CASE == 14  // field_not_a_choice: a condition on a value the parameter cannot take
const mfglab_param kParams[] = {GOOD_PARAM, {"mode", "string", "\"fast\"", kFree, kFree, 0, 0, "fast|slow", "a choice"}};
#define FIELDS_FIELD "score,value(mode=medium)"
#elif HOSTILE_CASE == 15  // field_malformed
const mfglab_param kParams[] = {GOOD_PARAM};
#define FIELDS_FIELD "score,value(width"
#else
#error "HOSTILE_CASE must be 1..15"
#endif

#ifndef NAME_FIELD
#define NAME_FIELD kName
#endif
#ifndef VERSION_FIELD
#define VERSION_FIELD kVersion
#endif
#ifndef DESCRIPTION_FIELD
#define DESCRIPTION_FIELD kDescription
#endif
#ifndef FIELDS_FIELD
#define FIELDS_FIELD ""
#endif

}  // namespace

extern "C" __attribute__((visibility("default"))) const mfglab_manifest* mfglab_plugin_entry(void) {
  static const mfglab_manifest manifest = {MFGLAB_SDK_MAJOR,
                                           MFGLAB_SDK_MINOR,
                                           sizeof(mfglab_manifest),
                                           TORCH_VERSION,
                                           MFGLAB_ABI_TAG,
                                           MFGLAB_KIND_METRIC,
                                           NAME_FIELD,
                                           VERSION_FIELD,
                                           DESCRIPTION_FIELD,
                                           kParams,
                                           sizeof(kParams) / sizeof(kParams[0]),
                                           FIELDS_FIELD,
                                           &broken::no_factory,
                                           sizeof(mfglab_param),
                                           nullptr};
  return &manifest;
}
