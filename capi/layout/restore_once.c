/*
 * The program whose first memimg_restore() capi/layout/regen.sh traces:
 *
 *   restore_once persist DIR          writes DIR/raw.img and DIR/zstd.img
 *   restore_once restore STRATEGY IMG one restore, as the C example's child
 *                                     makes it (same options), then exits
 *
 * The region is at the C example's arena address and the restore checks the
 * same kind of validation data, so the restore runs the same code as the
 * example's (and the bench's) children; only the sizes differ.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "memimg.h"

#define BASE 0x200000000000ULL
#define LEN (8ULL << 20)
#define TAG "restore-once"

static void check(const char *what, memimg_status s) {
    if (s != MEMIMG_OK) {
        fprintf(stderr, "restore_once: %s: %s\n", what, memimg_last_error_message());
        exit(1);
    }
}

static void persist(const char *path, memimg_codec codec) {
    struct memimg_persister *p = NULL;
    check("making a persister", memimg_persister_new(&p));
    struct memimg_region_spec spec = {
        .struct_size = sizeof spec,
        .addr = BASE,
        .len = LEN,
        .name = "arena",
        .kind = MEMIMG_KIND_HEAP,
        .prot = MEMIMG_PROT_READ | MEMIMG_PROT_WRITE,
    };
    uint64_t n = LEN;
    check("adding the region", memimg_persister_add_region(p, &spec));
    check("setting validation data",
          memimg_persister_set_validation(p, (const uint8_t *)TAG, strlen(TAG),
                                          (const uint8_t *)&n, sizeof n));
    check("setting the codec", memimg_persister_set_codec(p, codec, codec == MEMIMG_CODEC_ZSTD));
    check("writing", memimg_persister_write(p, path, NULL));
    check("freeing", memimg_persister_free(p));
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "persist") == 0) {
        uint64_t *m = mmap((void *)(uintptr_t)BASE, LEN, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (m == MAP_FAILED) {
            perror("restore_once: mmap");
            return 1;
        }
        /* Every other page holds data; the rest stay zero. */
        for (uint64_t i = 0; i < LEN / 8; i++)
            if ((i * 8 / 4096) % 2 == 0)
                m[i] = i * 0x9e3779b97f4a7c15ULL;
        char path[4096];
        snprintf(path, sizeof path, "%s/raw.img", argv[2]);
        persist(path, MEMIMG_CODEC_NONE);
        snprintf(path, sizeof path, "%s/zstd.img", argv[2]);
        persist(path, MEMIMG_CODEC_ZSTD);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "restore") == 0) {
        uint64_t n = LEN;
        struct memimg_restore_options o = {
            .struct_size = sizeof o,
            .strategy = strcmp(argv[2], "mmap") == 0    ? MEMIMG_STRATEGY_MMAP
                        : strcmp(argv[2], "eager") == 0 ? MEMIMG_STRATEGY_EAGER
                                                        : MEMIMG_STRATEGY_LAZY,
            .flags = MEMIMG_RESTORE_CHECK_VALIDATION,
            .validation_tag = (const uint8_t *)TAG,
            .validation_tag_len = strlen(TAG),
            .validation_data = (const uint8_t *)&n,
            .validation_data_len = sizeof n,
        };
        struct memimg_restored *r = NULL;
        check("restoring", memimg_restore(argv[3], &o, &r));
        _exit(0);
    }
    fprintf(stderr, "usage: restore_once persist DIR | restore mmap|eager|lazy IMG\n");
    return 2;
}
