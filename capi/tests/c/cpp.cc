// cpp.cc: the header from C++ (runtimes such as a JVM are written in it):
// it compiles with warnings as errors, links, and the function table works.
#include <cstdio>
#include <cstring>

#include "memimg.h"

int main() {
    // The function memimg_api hides the type: name it `struct memimg_api`.
    const struct memimg_api *api = memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api));
    if (api == nullptr || api->size != sizeof(struct memimg_api))
        return 1;
    memimg_persister *p = nullptr;
    memimg_status s = api->persister_new(&p);
    if (s != MEMIMG_OK || p == nullptr)
        return 2;
    if (api->persister_free(p) != MEMIMG_OK || api->persister_free(p) != MEMIMG_E_INVALID_ARGUMENT)
        return 3;
    if (std::strcmp(api->status_name(MEMIMG_E_WRONG_KEY), "MEMIMG_E_WRONG_KEY") != 0)
        return 4;
    std::printf("ok\n");
    return 0;
}
