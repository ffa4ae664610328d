// Not broken: built against another patch release of the engine's LibTorch major.minor,
// which the host accepts (only major.minor must match).
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN("torch_patch", MFGLAB_SDK_MAJOR, sizeof(mfglab_manifest),
                       MFGLAB_STR(TORCH_VERSION_MAJOR) "." MFGLAB_STR(TORCH_VERSION_MINOR) ".99+cpu",
                       MFGLAB_ABI_TAG)
