// Built for the next SDK minor: the engine's structs (RunContext, ...) may lack what it
// reads, so the host refuses it naming both versions.
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN_MINOR("sdk_minor", MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR + 1, sizeof(mfglab_manifest),
                             TORCH_VERSION, MFGLAB_ABI_TAG)
