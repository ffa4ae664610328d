// (b) Built for the next SDK major: the host must refuse it after reading only the head.
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN("sdk_major", MFGLAB_SDK_MAJOR + 1, sizeof(mfglab_manifest), TORCH_VERSION,
                       MFGLAB_ABI_TAG)
