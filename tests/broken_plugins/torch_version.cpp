// (d) Claims another LibTorch: its objects could not safely cross into the engine.
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN("torch_version", MFGLAB_SDK_MAJOR, sizeof(mfglab_manifest), "0.0.1",
                       MFGLAB_ABI_TAG)
