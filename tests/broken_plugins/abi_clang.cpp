// Not broken: the ABI tag Clang writes (__GXX_ABI_VERSION 1002) with the same libstdc++
// string ABI. The Itanium ABI family and _GLIBCXX_USE_CXX11_ABI are what must match.
#include "handmade.h"

BROKEN_HANDMADE_PLUGIN("abi_clang", MFGLAB_SDK_MAJOR, sizeof(mfglab_manifest), TORCH_VERSION,
                       "gxx-abi-1002-cxx11abi-" MFGLAB_STR(_GLIBCXX_USE_CXX11_ABI))
