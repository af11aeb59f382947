// The fuzz binaries compile stb_image and stb_image_resize from Debian's headers (the same
// sources libstb.a is built from) into themselves, so the sanitizers see inside the decoders
// too; the normal build links libstb.a instead. run.sh compiles this file twice: once per
// header, since the resizer gets other sanitizer flags (see there).
#ifdef TLCPU_STB_RESIZE
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
#else
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#endif
