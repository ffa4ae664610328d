// The one header a plugin source includes. Declare the plugin at the end of its source:
//
//   MFGLAB_PLUGIN(MyModel, MFGLAB_KIND_MODEL, "my_model", "1.0.0",
//                 "One line saying what it is", "score",
//                 mfglab::int_param("width", 64, "hidden units").at_least(1))
//
// CLASS must be constructible from (const mfglab::Params&, const mfglab::RunContext&).
// The engine checks the manifest this builds before anything else (manifest.h says what
// must match); each declared default must satisfy its own declaration, or the library is
// refused at load. Print nothing from static initialisers: the engine loads libraries with
// stdout pointed at stderr, and a plugin's messages belong in ctx.info / ctx.warn.
#pragma once

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <torch/csrc/api/include/torch/version.h>

#include "mfglab/manifest.h"
#include "mfglab/params.h"
#include "mfglab/sdk.h"

#define MFGLAB_STR2(x) #x
#define MFGLAB_STR(x) MFGLAB_STR2(x)
// C++ ABI and libstdc++ dual-ABI setting. The engine requires the same ABI family
// (__GXX_ABI_VERSION / 1000: the Itanium ABI of GCC and Clang) and the same
// _GLIBCXX_USE_CXX11_ABI; see manifest.h, "Compatibility".
#define MFGLAB_ABI_TAG \
  "gxx-abi-" MFGLAB_STR(__GXX_ABI_VERSION) "-cxx11abi-" MFGLAB_STR(_GLIBCXX_USE_CXX11_ABI)

namespace mfglab::detail {

inline void write_error(char* error, size_t size, const char* message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message, size - 1);
  error[size - 1] = '\0';
}

// The factory behind the manifest: exceptions stop here, never crossing the C boundary.
template <class T>
int create(const char* params_json, const void* context, void** out, char* error,
           size_t error_size) {
  try {
    auto params = Params::parse(params_json);
    auto object = std::make_unique<T>(params, *static_cast<const RunContext*>(context));
    *out = static_cast<Plugin*>(object.release());
    return 1;
  } catch (const std::exception& e) {
    write_error(error, error_size, e.what());
  } catch (...) {
    write_error(error, error_size, "unknown exception");
  }
  return 0;
}

// A metric's "better" direction (manifest.h): its class's kBetter member, if it has one.
template <class T, class = void>
struct BetterOf {
  static constexpr const char* value = nullptr;
};
template <class T>
struct BetterOf<T, std::void_t<decltype(T::kBetter)>> {
  static constexpr const char* value = T::kBetter;
};

// Owns the strings and the C arrays the manifest points into.
class ManifestHolder {
 public:
  ManifestHolder(int32_t kind, const char* name, const char* version, const char* description,
                 const char* fields, mfglab_factory_fn factory, std::vector<ParamSpec> specs,
                 const char* better = nullptr)
      : specs_(std::move(specs)) {
    for (const auto& s : specs_) {
      params_.push_back({s.name.c_str(), s.type.c_str(), s.default_json.c_str(), s.min, s.max,
                         s.min_exclusive ? 1 : 0, s.max_exclusive ? 1 : 0,
                         s.choices.empty() ? nullptr : s.choices.c_str(), s.doc.c_str()});
    }
    manifest_ = {MFGLAB_SDK_MAJOR,
                 MFGLAB_SDK_MINOR,
                 static_cast<uint32_t>(sizeof(mfglab_manifest)),
                 TORCH_VERSION,
                 MFGLAB_ABI_TAG,
                 kind,
                 name,
                 version,
                 description,
                 params_.data(),
                 static_cast<uint32_t>(params_.size()),
                 fields,
                 factory,
                 static_cast<uint32_t>(sizeof(mfglab_param)),
                 better};
  }
  const mfglab_manifest* get() const { return &manifest_; }

 private:
  std::vector<ParamSpec> specs_;
  std::vector<mfglab_param> params_;
  mfglab_manifest manifest_{};
};

}  // namespace mfglab::detail

// Defines the library's single exported symbol. The manifest is built on first call
// (a function-local static), so nothing depends on static-initialiser order.
#define MFGLAB_PLUGIN(CLASS, KIND, NAME, VERSION, DESCRIPTION, FIELDS, ...)                 \
  extern "C" __attribute__((visibility("default"))) const mfglab_manifest*                 \
  mfglab_plugin_entry(void) {                                                               \
    try {                                                                                   \
      static const ::mfglab::detail::ManifestHolder holder(                                 \
          KIND, NAME, VERSION, DESCRIPTION, FIELDS, &::mfglab::detail::create<CLASS>,      \
          std::vector<::mfglab::ParamSpec>{__VA_ARGS__},                                    \
          ::mfglab::detail::BetterOf<CLASS>::value);                                         \
      return holder.get();                                                                  \
    } catch (...) {                                                                         \
      return nullptr;                                                                       \
    }                                                                                       \
  }
