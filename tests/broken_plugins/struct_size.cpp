// (c) Claims a manifest shorter than this SDK's (as if built before `create` existed):
// the host must not read fields past the claimed size.
#include "handmade.h"

#include <cstddef>

BROKEN_HANDMADE_PLUGIN("struct_size", MFGLAB_SDK_MAJOR, offsetof(mfglab_manifest, create),
                       TORCH_VERSION, MFGLAB_ABI_TAG)
