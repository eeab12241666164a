/*
 * abi.c: checks that the header this program is built with and the
 * library it runs with agree: the size of every structure, the ABI
 * version, and the order of the function table (each entry must be the
 * function of that name). Run by tests/c/abi.rs, linked against the shared
 * and against the static library.
 */
#include <stddef.h>
#include <stdio.h>

#include "memimg.h"

static int checks, failures;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL line %d: ", __LINE__);                                                   \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static void size_is(memimg_struct_id id, size_t header, const char *name) {
    size_t lib = 0;
    memimg_status s = memimg_struct_size(id, &lib);
    EXPECT(s == MEMIMG_OK, "memimg_struct_size(%s): %s", name, memimg_status_name(s));
    EXPECT(lib == header, "sizeof(%s) is %zu in the header, %zu in the library", name, header,
           lib);
}

#define SIZE(ID, T) size_is(ID, sizeof(T), #T)
#define FN(f)                                                                                      \
    do {                                                                                           \
        EXPECT(api->f == memimg_##f, "api->" #f " is not memimg_" #f                              \
               ": the header orders the table differently from the library");                     \
        functions++;                                                                               \
    } while (0)

int main(void) {
    EXPECT(memimg_abi_version() == MEMIMG_ABI_VERSION, "the library has ABI version %u, the header %u",
           memimg_abi_version(), MEMIMG_ABI_VERSION);
    SIZE(MEMIMG_STRUCT_API, struct memimg_api);
    SIZE(MEMIMG_STRUCT_LOCATION, struct memimg_location);
    SIZE(MEMIMG_STRUCT_ERROR_INFO, struct memimg_error_info);
    SIZE(MEMIMG_STRUCT_REGION_SPEC, struct memimg_region_spec);
    SIZE(MEMIMG_STRUCT_WRITE_STATS, struct memimg_write_stats);
    SIZE(MEMIMG_STRUCT_RESTORE_OPTIONS, struct memimg_restore_options);
    SIZE(MEMIMG_STRUCT_RESTORE_INFO, struct memimg_restore_info);
    SIZE(MEMIMG_STRUCT_LAZY_STATS, struct memimg_lazy_stats);
    SIZE(MEMIMG_STRUCT_REGION_INFO, struct memimg_region_info);
    SIZE(MEMIMG_STRUCT_HEADER_INFO, struct memimg_header_info);
    SIZE(MEMIMG_STRUCT_EXTENT_INFO, struct memimg_extent_info);
    SIZE(MEMIMG_STRUCT_VERIFY_OPTIONS, struct memimg_verify_options);
    SIZE(MEMIMG_STRUCT_REPORT_INFO, struct memimg_report_info);
    SIZE(MEMIMG_STRUCT_PROBLEM, struct memimg_problem);
    size_t unknown = 0;
    EXPECT(memimg_struct_size(1000, &unknown) == MEMIMG_E_INVALID_ARGUMENT,
           "an unknown structure id is refused");

    const struct memimg_api *api = memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api));
    EXPECT(api != NULL, "memimg_api: %s", memimg_last_error_message());
    if (!api) {
        printf("%d checks, %d failures\n", checks, failures);
        return 1;
    }
    EXPECT(api->size == sizeof(struct memimg_api), "the table is %zu bytes, the header says %zu",
           api->size, sizeof(struct memimg_api));
    EXPECT(api->version == MEMIMG_ABI_VERSION, "the table is version %u", api->version);
    int functions = 0;
    FN(abi_version);
    FN(library_version);
    FN(struct_size);
    FN(status_name);
    FN(last_error);
    FN(last_error_message);
    FN(key_from_bytes);
    FN(key_from_file);
    FN(key_from_passphrase_file);
    FN(key_free);
    FN(persister_new);
    FN(persister_free);
    FN(persister_add_region);
    FN(persister_set_validation);
    FN(persister_set_codec);
    FN(persister_set_key);
    FN(persister_set_chunk_size);
    FN(persister_set_workers);
    FN(persister_write);
    FN(restore);
    FN(restored_info);
    FN(restored_region);
    FN(restored_prefetch);
    FN(restored_stats);
    FN(restored_finish);
    FN(restored_free);
    FN(image_open);
    FN(image_free);
    FN(image_header);
    FN(image_region_count);
    FN(image_region);
    FN(image_extent_count);
    FN(image_extent);
    FN(image_read_at);
    FN(verify);
    FN(report_info);
    FN(report_problem);
    FN(report_text);
    FN(report_free);
    size_t first = offsetof(struct memimg_api, abi_version);
    EXPECT((sizeof(struct memimg_api) - first) / sizeof(void (*)(void)) == (size_t)functions,
           "the table has %zu entries, this program checked %d",
           (sizeof(struct memimg_api) - first) / sizeof(void (*)(void)), functions);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
