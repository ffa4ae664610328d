// A manifest written field by field, so that a test library can get exactly one field
// wrong. The host refuses these before calling the factory, which therefore only has to
// exist.
#pragma once

#include <mfglab/plugin.h>

namespace broken {

inline int no_factory(const char*, const void*, void**, char* error, size_t size) {
  mfglab::detail::write_error(error, size, "this test plugin creates nothing");
  return 0;
}

}  // namespace broken

#define BROKEN_HANDMADE_PLUGIN(NAME, SDK_MAJOR, STRUCT_SIZE, TORCH_VER, ABI_TAG) \
  BROKEN_HANDMADE_PLUGIN_MINOR(NAME, SDK_MAJOR, MFGLAB_SDK_MINOR, STRUCT_SIZE, TORCH_VER, ABI_TAG)

// The same with the SDK minor given too.
#define BROKEN_HANDMADE_PLUGIN_MINOR(NAME, SDK_MAJOR, SDK_MINOR, STRUCT_SIZE, TORCH_VER, ABI_TAG)      \
  extern "C" __attribute__((visibility("default"))) const mfglab_manifest*                        \
  mfglab_plugin_entry(void) {                                                                      \
    static const mfglab_manifest manifest = {                                                      \
        SDK_MAJOR, SDK_MINOR, STRUCT_SIZE, TORCH_VER, ABI_TAG, MFGLAB_KIND_METRIC,                 \
        NAME,      "1.0.0",   "broken on purpose", nullptr, 0, "", &broken::no_factory,            \
        static_cast<uint32_t>(sizeof(mfglab_param)), nullptr};                                     \
    return &manifest;                                                                              \
  }
