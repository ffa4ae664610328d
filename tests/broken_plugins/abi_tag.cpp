// (e) Claims another C++ ABI (an old libstdc++ string ABI).
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN("abi_tag", MFGLAB_SDK_MAJOR, sizeof(mfglab_manifest), TORCH_VERSION,
                       "gxx-abi-0-cxx11abi-0")
