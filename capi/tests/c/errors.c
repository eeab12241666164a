/*
 * errors.c: every function of the C ABI with NULL and invalid arguments,
 * and the failures a caller meets: a wrong key, a damaged image, a missing
 * file, a restore onto an address in use. Every call must return the
 * expected status and never crash; run under ASan and UBSan, and under
 * valgrind, by tests/c/errors.rs.
 *
 *   errors DIR      (DIR: an empty scratch directory)
 *
 * MEMIMG_CTEST_NO_LAZY=why leaves out lazy restores (under valgrind, whose
 * threads cannot serve a userfaultfd fault: it runs one thread at a time).
 * Prints "N checks, M failures" and exits 1 when M > 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memimg.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define BASE 0x300000000000ULL
#define NPAGES 32
#define ZERO_FIRST 3 /* pages 3, 4, 5 are zero */
#define ZERO_LAST 5
#define TAG "ctest"
#define DATA "v1"
#define NAME "ctest-region"

static int checks, failures;
static const char *dir;
static size_t ps;
static const char *no_lazy;
static uint8_t key_bytes[32], wrong_key_bytes[32];

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        failures++;                                                                                \
        printf("FAIL line %d: ", __LINE__);                                                       \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
    } while (0)

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond))                                                                               \
            FAIL(__VA_ARGS__);                                                                     \
    } while (0)

/* ST(want, call): the call returns `want`. */
#define ST(want, call)                                                                             \
    do {                                                                                           \
        memimg_status got_ = (call);                                                               \
        checks++;                                                                                  \
        if (got_ != (want))                                                                        \
            FAIL("%s returned %s, expected %s (last error: %s)", #call, memimg_status_name(got_),  \
                 memimg_status_name(want), memimg_last_error_message());                           \
    } while (0)

/* The last error's message contains `needle`. */
#define LAST_HAS(needle)                                                                           \
    EXPECT(strstr(memimg_last_error_message(), (needle)) != NULL,                                  \
           "the last error \"%s\" does not say \"%s\"", memimg_last_error_message(), (needle))

static char *path_of(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "%s/%s", dir, name);
    return b;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void write_file(const char *path, const void *bytes, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

static void copy_file(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    if (!f) {
        perror(from);
        exit(2);
    }
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_file(to, buf, n);
}

static void flip_byte(const char *path, long offset) {
    int fd = open(path, O_RDWR);
    uint8_t b;
    if (fd < 0 || pread(fd, &b, 1, offset) != 1) {
        perror(path);
        exit(2);
    }
    b ^= 0xff;
    if (pwrite(fd, &b, 1, offset) != 1) {
        perror(path);
        exit(2);
    }
    close(fd);
}

static uint8_t pattern(size_t page, size_t i) {
    if (page >= ZERO_FIRST && page <= ZERO_LAST)
        return 0;
    return (uint8_t)(page * 131 + i * 7 + 1);
}

static void fill(uint8_t *p) {
    for (size_t pg = 0; pg < NPAGES; pg++)
        for (size_t i = 0; i < ps; i++)
            p[pg * ps + i] = pattern(pg, i);
}

/* The first byte that differs from the pattern, or -1. */
static long differs(const uint8_t *p) {
    for (size_t pg = 0; pg < NPAGES; pg++)
        for (size_t i = 0; i < ps; i++)
            if (p[pg * ps + i] != pattern(pg, i))
                return (long)(pg * ps + i);
    return -1;
}

static void *map_base(int prot) {
    void *p = mmap((void *)(uintptr_t)BASE, NPAGES * ps, prot,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)(uintptr_t)BASE) {
        fprintf(stderr, "errors: cannot map %#llx\n", BASE);
        exit(2);
    }
    return p;
}

/* True when nothing is mapped at BASE (a failed restore left nothing). */
static int base_is_free(void) {
    void *p = mmap((void *)(uintptr_t)BASE, NPAGES * ps, PROT_READ,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, NPAGES * ps);
    return p == (void *)(uintptr_t)BASE;
}

static struct memimg_region_spec good_spec(void) {
    struct memimg_region_spec s = {
        .struct_size = sizeof s,
        .addr = BASE,
        .len = NPAGES * ps,
        .name = NAME,
        .kind = MEMIMG_KIND_HEAP,
        .prot = MEMIMG_PROT_READ | MEMIMG_PROT_WRITE,
    };
    return s;
}

static struct memimg_key *key_of(const uint8_t *bytes) {
    struct memimg_key *k = NULL;
    ST(MEMIMG_OK, memimg_key_from_bytes(bytes, 32, &k));
    return k;
}

/* ---- versions, the table, the last error, names, sizes ---- */

static void test_versions(void) {
    EXPECT(memimg_abi_version() == MEMIMG_ABI_VERSION, "ABI version %u", memimg_abi_version());
    EXPECT(strncmp(memimg_library_version(), "memimg-capi ", 12) == 0, "library version %s",
           memimg_library_version());
    const struct memimg_api *api = memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api));
    EXPECT(api && api->size == sizeof *api, "memimg_api");
    EXPECT(memimg_api(0, sizeof(struct memimg_api)) == NULL, "version 0 is refused");
    struct memimg_error_info info = {.struct_size = sizeof info};
    ST(MEMIMG_OK, memimg_last_error(&info));
    EXPECT(info.status == MEMIMG_E_UNSUPPORTED, "version 0: %s", memimg_status_name(info.status));
    EXPECT(memimg_api(MEMIMG_ABI_VERSION + 1, sizeof(struct memimg_api)) == NULL,
           "a newer version is refused");
    LAST_HAS("not one this library has");
    EXPECT(memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api) + 8) == NULL,
           "a larger table is refused");
    EXPECT(memimg_api(MEMIMG_ABI_VERSION, sizeof(struct memimg_api) - 8) == NULL,
           "a smaller table is refused");
    LAST_HAS("does not match");

    /* Calls through the table. */
    if (api) {
        struct memimg_persister *p = NULL;
        ST(MEMIMG_OK, api->persister_new(&p));
        ST(MEMIMG_OK, api->persister_free(p));
        ST(MEMIMG_E_INVALID_ARGUMENT, api->persister_free(p));
    }

    EXPECT(strcmp(memimg_status_name(MEMIMG_E_WRONG_KEY), "MEMIMG_E_WRONG_KEY") == 0, "name");
    EXPECT(strcmp(memimg_status_name(MEMIMG_OK), "MEMIMG_OK") == 0, "name");
    EXPECT(strcmp(memimg_status_name(-1), "MEMIMG_E_UNKNOWN") == 0, "unknown name");
    EXPECT(strcmp(memimg_status_name(100000), "MEMIMG_E_UNKNOWN") == 0, "unknown name");

    size_t n = 0;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_struct_size(MEMIMG_STRUCT_PROBLEM, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_struct_size(9999, &n));
    ST(MEMIMG_OK, memimg_struct_size(MEMIMG_STRUCT_PROBLEM, &n));
    EXPECT(n == sizeof(struct memimg_problem), "struct size");

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_last_error(NULL));
    struct memimg_error_info small = {.struct_size = 8};
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_last_error(&small));
    /* A caller whose header is newer: the bytes past what the library
     * knows are zeroed. */
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_struct_size(9999, &n));
    struct {
        struct memimg_error_info info;
        uint64_t newer;
    } big;
    memset(&big, 0xee, sizeof big);
    big.info.struct_size = sizeof big;
    ST(MEMIMG_OK, memimg_last_error(&big.info));
    EXPECT(big.newer == 0, "the unknown tail was not zeroed");
    EXPECT(big.info.struct_size == sizeof big, "struct_size changed");
    EXPECT(big.info.status == MEMIMG_E_INVALID_ARGUMENT, "last status %s",
           memimg_status_name(big.info.status));
    EXPECT(strcmp(big.info.message, memimg_last_error_message()) == 0, "two messages");
    EXPECT(strstr(big.info.message, "memimg_struct_size") != NULL, "message %s", big.info.message);
}

/* ---- keys ---- */

static void test_keys(void) {
    struct memimg_key *k = (struct memimg_key *)&k, *k2 = NULL;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_bytes(NULL, 32, &k));
    EXPECT(k == NULL, "*out is NULL after a failure");
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_bytes(key_bytes, 31, &k));
    LAST_HAS("32 bytes");
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_bytes(key_bytes, 0, &k));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_bytes(key_bytes, 32, NULL));
    ST(MEMIMG_OK, memimg_key_from_bytes(key_bytes, 32, &k));

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_file(NULL, &k2));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_file("", &k2));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_file(path_of("k"), NULL));
    ST(MEMIMG_E_IO, memimg_key_from_file(path_of("no-such-key"), &k2));
    LAST_HAS("no-such-key");
    write_file(path_of("short.key"), key_bytes, 31);
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_file(path_of("short.key"), &k2));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_file(dir, &k2));
    LAST_HAS("directory");
    write_file(path_of("good.key"), key_bytes, 32);
    ST(MEMIMG_OK, memimg_key_from_file(path_of("good.key"), &k2));

    struct memimg_key *pk = NULL;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_passphrase_file(NULL, &pk));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_passphrase_file(path_of("p"), NULL));
    write_file(path_of("empty.pass"), "\n", 1);
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_from_passphrase_file(path_of("empty.pass"), &pk));
    write_file(path_of("good.pass"), "correct horse\n", 14);
    ST(MEMIMG_OK, memimg_key_from_passphrase_file(path_of("good.pass"), &pk));

    ST(MEMIMG_OK, memimg_key_free(NULL));
    ST(MEMIMG_OK, memimg_key_free(pk));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_free(pk)); /* twice */
    LAST_HAS("not a live memimg_key");
    int local;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_key_free((struct memimg_key *)&local)); /* never a handle */
    ST(MEMIMG_OK, memimg_key_free(k2));
    ST(MEMIMG_OK, memimg_key_free(k));
}

/* ---- persisting: argument errors ---- */

static void test_persister_arguments(void) {
    struct memimg_persister *p = NULL;
    struct memimg_key *k = key_of(key_bytes);
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_new(NULL));
    ST(MEMIMG_OK, memimg_persister_new(&p));
    struct memimg_region_spec s = good_spec();

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(NULL, &s));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region((struct memimg_persister *)k, &s));
    LAST_HAS("another type");
    s.struct_size = 0;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    LAST_HAS("struct_size");
    s.struct_size = 4;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    s.struct_size = (size_t)1 << 40;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    s = good_spec();
    struct {
        struct memimg_region_spec s;
        uint64_t newer;
    } big = {s, 1};
    big.s.struct_size = sizeof big;
    ST(MEMIMG_E_UNKNOWN_FIELDS, memimg_persister_add_region(p, &big.s));
    s.kind = 99;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.prot = 8;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.len = 0;
    ST(MEMIMG_E_BAD_REGION, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.addr += 1;
    ST(MEMIMG_E_BAD_REGION, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.len = ps + 1;
    ST(MEMIMG_E_BAD_REGION, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.addr = UINT64_MAX - ps + 1;
    s.len = 2 * ps;
    ST(MEMIMG_E_BAD_REGION, memimg_persister_add_region(p, &s));
    s = good_spec();
    s.name = "\xff\xfe";
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_add_region(p, &s));
    LAST_HAS("UTF-8");

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_validation(NULL, NULL, 0, NULL, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_validation(p, NULL, 3, NULL, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_validation(p, (const uint8_t *)"t", 1, NULL, 5));
    ST(MEMIMG_OK, memimg_persister_set_validation(p, NULL, 0, NULL, 0));

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_codec(NULL, MEMIMG_CODEC_NONE, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_codec(p, 7, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_codec(p, MEMIMG_CODEC_NONE, 3));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_codec(p, MEMIMG_CODEC_ZSTD, 99));
    LAST_HAS("out of range");
    ST(MEMIMG_OK, memimg_persister_set_codec(p, MEMIMG_CODEC_ZSTD, 0));

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_key(NULL, k));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_key(p, (struct memimg_key *)p));
    ST(MEMIMG_OK, memimg_persister_set_key(p, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_chunk_size(NULL, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_set_workers(NULL, 0));

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(NULL, path_of("x.img"), NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(p, NULL, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(p, "", NULL));
    struct memimg_write_stats bad_stats = {.struct_size = 0};
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(p, path_of("x.img"), &bad_stats));
    EXPECT(!exists(path_of("x.img")), "a refused write left a file");

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_free((struct memimg_persister *)k));
    ST(MEMIMG_OK, memimg_persister_free(p));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_free(p));
    ST(MEMIMG_OK, memimg_persister_free(NULL));
    ST(MEMIMG_OK, memimg_key_free(k));
}

/* A persister of one region at `addr`, `pages` long. */
static struct memimg_persister *one_region(uint64_t addr, size_t pages) {
    struct memimg_persister *p = NULL;
    ST(MEMIMG_OK, memimg_persister_new(&p));
    struct memimg_region_spec s = good_spec();
    s.addr = addr;
    s.len = pages * ps;
    ST(MEMIMG_OK, memimg_persister_add_region(p, &s));
    return p;
}

/* ---- persisting: what goes wrong when writing ---- */

static void test_persister_failures(void) {
    /* Memory that is not mapped. */
    void *m = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m, 4 * ps);
    struct memimg_persister *p = one_region((uint64_t)(uintptr_t)m, 4);
    ST(MEMIMG_E_BAD_REGION, memimg_persister_write(p, path_of("unmapped.img"), NULL));
    LAST_HAS("is not mapped");
    EXPECT(!exists(path_of("unmapped.img")), "a failed write left a file");
    ST(MEMIMG_OK, memimg_persister_free(p));

    /* Memory that is mapped but not readable. */
    m = mmap(NULL, 4 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = one_region((uint64_t)(uintptr_t)m, 4);
    ST(MEMIMG_E_BAD_REGION, memimg_persister_write(p, path_of("prot-none.img"), NULL));
    LAST_HAS("not readable");
    ST(MEMIMG_OK, memimg_persister_free(p));
    munmap(m, 4 * ps);

    /* Overlapping regions, a missing directory, over-long validation data. */
    m = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = one_region((uint64_t)(uintptr_t)m, 4);
    ST(MEMIMG_E_IO, memimg_persister_write(p, path_of("no-such-dir/x.img"), NULL));
    LAST_HAS("no-such-dir");
    char tag[65];
    memset(tag, 't', sizeof tag);
    ST(MEMIMG_OK, memimg_persister_set_validation(p, (const uint8_t *)tag, sizeof tag, NULL, 0));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(p, path_of("long-tag.img"), NULL));
    EXPECT(!exists(path_of("long-tag.img")), "a failed write left a file");
    ST(MEMIMG_OK, memimg_persister_set_validation(p, NULL, 0, NULL, 0));
    ST(MEMIMG_OK, memimg_persister_set_chunk_size(p, 12345));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_persister_write(p, path_of("bad-chunk.img"), NULL));
    LAST_HAS("chunk size");
    ST(MEMIMG_OK, memimg_persister_set_chunk_size(p, 0));
    struct memimg_region_spec s = good_spec();
    s.addr = (uint64_t)(uintptr_t)m + ps;
    s.len = ps;
    ST(MEMIMG_OK, memimg_persister_add_region(p, &s));
    ST(MEMIMG_E_BAD_REGION, memimg_persister_write(p, path_of("overlap.img"), NULL));
    LAST_HAS("overlaps");
    ST(MEMIMG_OK, memimg_persister_free(p));
    munmap(m, 4 * ps);
}

/* ---- the images the rest reads ---- */

static void make_images(void) {
    uint8_t *base = map_base(PROT_READ | PROT_WRITE);
    fill(base);
    struct memimg_key *k = key_of(key_bytes);
    static const struct {
        const char *name;
        memimg_codec codec;
        int encrypt;
    } images[] = {{"plain.img", MEMIMG_CODEC_NONE, 0},
                  {"zstd.img", MEMIMG_CODEC_ZSTD, 0},
                  {"enc.img", MEMIMG_CODEC_ZSTD, 1}};
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++) {
        struct memimg_persister *p = one_region(BASE, NPAGES);
        ST(MEMIMG_OK, memimg_persister_set_validation(p, (const uint8_t *)TAG, strlen(TAG),
                                                      (const uint8_t *)DATA, strlen(DATA)));
        ST(MEMIMG_OK, memimg_persister_set_codec(p, images[i].codec, 0));
        if (images[i].encrypt)
            ST(MEMIMG_OK, memimg_persister_set_key(p, k));
        ST(MEMIMG_OK, memimg_persister_set_workers(p, 2));
        struct memimg_write_stats st = {.struct_size = sizeof st};
        ST(MEMIMG_OK, memimg_persister_write(p, path_of(images[i].name), &st));
        EXPECT(st.regions == 1 && st.file_len > 0, "%s: stats %llu regions, %llu bytes",
               images[i].name, (unsigned long long)st.regions, (unsigned long long)st.file_len);
        EXPECT(st.zero_pages == ZERO_LAST - ZERO_FIRST + 1, "%s: %llu zero pages", images[i].name,
               (unsigned long long)st.zero_pages);
        ST(MEMIMG_OK, memimg_persister_free(p));
    }
    /* The persister copied the key: it could be freed before writing. */
    ST(MEMIMG_OK, memimg_key_free(k));
    /* A damaged copy: one byte of the first chunk (at the first page after
     * the header) flipped. */
    copy_file(path_of("plain.img"), path_of("damaged.img"));
    flip_byte(path_of("damaged.img"), (long)ps + 100);
    write_file(path_of("text.txt"), "not an image at all\n", 20);
}

/* ---- restoring ---- */

static void test_restore_failures(void) {
    struct memimg_restored *r = (struct memimg_restored *)&r;
    struct memimg_key *k = key_of(key_bytes), *wrong = key_of(wrong_key_bytes);
    struct memimg_restore_options o = {.struct_size = sizeof o};

    /* The region is still mapped: the address is in use. */
    ST(MEMIMG_E_ADDRESS_IN_USE, memimg_restore(path_of("plain.img"), NULL, &r));
    EXPECT(r == NULL, "*out is NULL after a failure");
    LAST_HAS("already in use");
    struct memimg_error_info info = {.struct_size = sizeof info};
    ST(MEMIMG_OK, memimg_last_error(&info));
    EXPECT((info.location.present & MEMIMG_LOCATION_ADDR) && info.location.addr == BASE,
           "address in use: location %#x %#llx", info.location.present,
           (unsigned long long)info.location.addr);
    munmap((void *)(uintptr_t)BASE, NPAGES * ps);

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(NULL, NULL, &r));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("plain.img"), NULL, NULL));
    o.struct_size = 3;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("plain.img"), &o, &r));
    o.struct_size = sizeof o;
    o.strategy = 9;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("plain.img"), &o, &r));
    o.strategy = MEMIMG_STRATEGY_AUTO;
    o.flags = 0x80;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("plain.img"), &o, &r));
    o.flags = MEMIMG_RESTORE_CHECK_VALIDATION;
    o.validation_tag_len = 3;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("plain.img"), &o, &r));
    o = (struct memimg_restore_options){.struct_size = sizeof o, .key = (struct memimg_key *)&o};
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restore(path_of("enc.img"), &o, &r));
    EXPECT(base_is_free(), "a refused restore left a mapping");

    /* A missing file, a text file, damage. */
    ST(MEMIMG_E_IO, memimg_restore(path_of("missing.img"), NULL, &r));
    LAST_HAS("missing.img");
    ST(MEMIMG_E_NOT_AN_IMAGE, memimg_restore(path_of("text.txt"), NULL, &r));
    o = (struct memimg_restore_options){.struct_size = sizeof o, .strategy = MEMIMG_STRATEGY_EAGER};
    ST(MEMIMG_E_CHECKSUM, memimg_restore(path_of("damaged.img"), &o, &r));
    EXPECT(base_is_free(), "a failed restore left a mapping");

    /* Validation data that differs. */
    o = (struct memimg_restore_options){
        .struct_size = sizeof o,
        .flags = MEMIMG_RESTORE_CHECK_VALIDATION,
        .validation_tag = (const uint8_t *)TAG,
        .validation_tag_len = strlen(TAG),
        .validation_data = (const uint8_t *)"v2",
        .validation_data_len = 2,
    };
    ST(MEMIMG_E_VALIDATION_MISMATCH, memimg_restore(path_of("plain.img"), &o, &r));
    LAST_HAS("validation data differs");
    o.validation_tag = (const uint8_t *)"other";
    o.validation_tag_len = 5;
    ST(MEMIMG_E_VALIDATION_MISMATCH, memimg_restore(path_of("plain.img"), &o, &r));
    LAST_HAS("validation tag differs");

    /* Keys. */
    ST(MEMIMG_E_KEY_REQUIRED, memimg_restore(path_of("enc.img"), NULL, &r));
    o = (struct memimg_restore_options){.struct_size = sizeof o, .key = wrong};
    ST(MEMIMG_E_WRONG_KEY, memimg_restore(path_of("enc.img"), &o, &r));
    o.key = k;
    ST(MEMIMG_E_NOT_ENCRYPTED, memimg_restore(path_of("plain.img"), &o, &r));

    /* A strategy that cannot restore this image. */
    o = (struct memimg_restore_options){.struct_size = sizeof o, .strategy = MEMIMG_STRATEGY_MMAP};
    ST(MEMIMG_E_STRATEGY_UNAVAILABLE, memimg_restore(path_of("zstd.img"), &o, &r));
    LAST_HAS("compressed");
    EXPECT(base_is_free(), "a failed restore left a mapping");

    ST(MEMIMG_OK, memimg_key_free(k));
    ST(MEMIMG_OK, memimg_key_free(wrong));
}

static void restore_one(const char *image, memimg_strategy strategy, memimg_strategy used,
                        int with_key) {
    struct memimg_key *k = key_of(key_bytes);
    struct memimg_restore_options o = {
        .struct_size = sizeof o,
        .strategy = strategy,
        .key = with_key ? k : NULL,
        .flags = MEMIMG_RESTORE_CHECK_VALIDATION,
        .validation_tag = (const uint8_t *)TAG,
        .validation_tag_len = strlen(TAG),
        .validation_data = (const uint8_t *)DATA,
        .validation_data_len = strlen(DATA),
    };
    struct memimg_restored *r = NULL;
    ST(MEMIMG_OK, memimg_restore(path_of(image), &o, &r));
    /* The options and key were copied. */
    ST(MEMIMG_OK, memimg_key_free(k));
    if (!r)
        return;
    const uint8_t *base = (const uint8_t *)(uintptr_t)BASE;
    struct memimg_lazy_stats ls = {.struct_size = sizeof ls};
    if (used == MEMIMG_STRATEGY_LAZY) {
        /* One touch, before any prefetch: served by a fault. */
        EXPECT(base[0] == pattern(0, 0), "%s lazy: first byte", image);
        ST(MEMIMG_OK, memimg_restored_stats(r, &ls));
        EXPECT(ls.faults >= 1 && !ls.finished && ls.units_total > 0, "%s lazy: %llu faults",
               image, (unsigned long long)ls.faults);
    }
    ST(MEMIMG_OK, memimg_restored_prefetch(r));
    long d = differs(base);
    EXPECT(d < 0, "%s restored with strategy %u: byte %ld differs", image, used, d);

    struct memimg_restore_info info = {.struct_size = sizeof info};
    ST(MEMIMG_OK, memimg_restored_info(r, &info));
    EXPECT(info.strategy == used && info.region_count == 1, "%s: strategy %u, %zu regions", image,
           info.strategy, info.region_count);
    EXPECT(info.lazy_running == (used == MEMIMG_STRATEGY_LAZY), "lazy_running %u",
           info.lazy_running);
    struct memimg_region_info ri = {.struct_size = sizeof ri};
    ST(MEMIMG_OK, memimg_restored_region(r, 0, &ri));
    EXPECT(ri.start == BASE && ri.len == NPAGES * ps && ri.name_len == strlen(NAME) &&
               memcmp(ri.name, NAME, ri.name_len) == 0 && ri.kind == MEMIMG_KIND_HEAP &&
               ri.prot == (MEMIMG_PROT_READ | MEMIMG_PROT_WRITE),
           "%s: restored region", image);
    ST(MEMIMG_E_OUT_OF_RANGE, memimg_restored_region(r, 1, &ri));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_region(r, 0, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_info(r, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_stats(r, NULL));
    ls.struct_size = 1;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_finish(r, &ls));
    ls.struct_size = sizeof ls;
    ST(MEMIMG_OK, memimg_restored_finish(r, &ls));
    if (used == MEMIMG_STRATEGY_LAZY) {
        EXPECT(ls.finished && ls.units_done == ls.units_total && !ls.error,
               "%s lazy finish: finished %u, %llu of %llu", image, ls.finished,
               (unsigned long long)ls.units_done, (unsigned long long)ls.units_total);
        struct memimg_lazy_stats again = {.struct_size = sizeof again};
        ST(MEMIMG_OK, memimg_restored_stats(r, &again));
        EXPECT(again.finished && again.faults == ls.faults, "stats after finish");
        ST(MEMIMG_OK, memimg_restored_info(r, &info));
        EXPECT(!info.lazy_running, "still running after finish");
    } else {
        EXPECT(ls.faults == 0 && ls.units_total == 0 && !ls.finished, "%s: lazy stats of %u", image,
               used);
    }
    ST(MEMIMG_OK, memimg_restored_finish(r, NULL));
    ST(MEMIMG_OK, memimg_restored_prefetch(r));
    ST(MEMIMG_OK, memimg_restored_free(r));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_free(r));
    /* The mapping stayed: it belongs to the program. */
    EXPECT(!base_is_free() && differs(base) < 0, "%s: the mapping went with the handle", image);
    munmap((void *)(uintptr_t)BASE, NPAGES * ps);
}

static void test_restore(void) {
    struct memimg_restored *r = NULL;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_info(NULL, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_region(NULL, 0, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_prefetch(NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_stats(NULL, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_finish(NULL, NULL));
    ST(MEMIMG_OK, memimg_restored_free(NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_prefetch((struct memimg_restored *)&r));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_restored_free((struct memimg_restored *)&r));

    restore_one("plain.img", MEMIMG_STRATEGY_MMAP, MEMIMG_STRATEGY_MMAP, 0);
    restore_one("plain.img", MEMIMG_STRATEGY_AUTO, MEMIMG_STRATEGY_MMAP, 0);
    restore_one("zstd.img", MEMIMG_STRATEGY_AUTO, MEMIMG_STRATEGY_EAGER, 0);
    restore_one("zstd.img", MEMIMG_STRATEGY_EAGER, MEMIMG_STRATEGY_EAGER, 0);
    restore_one("enc.img", MEMIMG_STRATEGY_EAGER, MEMIMG_STRATEGY_EAGER, 1);
    if (no_lazy) {
        printf("lazy restores left out: %s\n", no_lazy);
    } else {
        restore_one("zstd.img", MEMIMG_STRATEGY_LAZY, MEMIMG_STRATEGY_LAZY, 0);
        restore_one("enc.img", MEMIMG_STRATEGY_LAZY, MEMIMG_STRATEGY_LAZY, 1);
    }
}

/* ---- reading ---- */

static void test_image(void) {
    struct memimg_image *img = (struct memimg_image *)&img;
    struct memimg_key *k = key_of(key_bytes), *wrong = key_of(wrong_key_bytes);
    struct memimg_header_info h = {.struct_size = sizeof h};
    size_t n = 0;

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_open(NULL, NULL, &img));
    EXPECT(img == NULL, "*out is NULL after a failure");
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_open(path_of("plain.img"), NULL, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_open(path_of("plain.img"), (struct memimg_key *)&h, &img));
    ST(MEMIMG_E_IO, memimg_image_open(path_of("missing.img"), NULL, &img));
    LAST_HAS("missing.img");
    ST(MEMIMG_E_NOT_AN_IMAGE, memimg_image_open(path_of("text.txt"), NULL, &img));
    ST(MEMIMG_E_WRONG_KEY, memimg_image_open(path_of("enc.img"), wrong, &img));
    ST(MEMIMG_E_NOT_ENCRYPTED, memimg_image_open(path_of("plain.img"), k, &img));

    /* Encrypted, without its key: the header only. */
    ST(MEMIMG_OK, memimg_image_open(path_of("enc.img"), NULL, &img));
    ST(MEMIMG_OK, memimg_image_header(img, &h));
    EXPECT((h.flags & MEMIMG_HEADER_ENCRYPTED) && !(h.flags & MEMIMG_HEADER_UNLOCKED),
           "enc.img flags %#x", h.flags);
    ST(MEMIMG_E_KEY_REQUIRED, memimg_image_region_count(img, &n));
    ST(MEMIMG_E_KEY_REQUIRED, memimg_image_extent_count(img, &n));
    ST(MEMIMG_OK, memimg_image_free(img));
    /* With it. */
    ST(MEMIMG_OK, memimg_image_open(path_of("enc.img"), k, &img));
    ST(MEMIMG_OK, memimg_image_region_count(img, &n));
    EXPECT(n == 1, "%zu regions", n);
    uint8_t *buf = malloc(NPAGES * ps);
    ST(MEMIMG_OK, memimg_image_read_at(img, BASE, buf, NPAGES * ps));
    EXPECT(differs(buf) < 0, "enc.img read_at differs");
    ST(MEMIMG_OK, memimg_image_free(img));

    ST(MEMIMG_OK, memimg_image_open(path_of("plain.img"), NULL, &img));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_header(NULL, &h));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_header(img, NULL));
    h.struct_size = 16;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_header(img, &h));
    h.struct_size = sizeof h;
    ST(MEMIMG_OK, memimg_image_header(img, &h));
    EXPECT(h.version_major == 1 && h.page_size == ps && h.chunk_count >= 1 &&
               !(h.flags & MEMIMG_HEADER_ENCRYPTED) && (h.flags & MEMIMG_HEADER_UNLOCKED),
           "plain.img header: version %u, page %u, %llu chunks, flags %#x", h.version_major,
           h.page_size, (unsigned long long)h.chunk_count, h.flags);
    EXPECT((h.flags & MEMIMG_HEADER_HAS_VALIDATION) && h.validation_tag_len == strlen(TAG) &&
               memcmp(h.validation_tag, TAG, h.validation_tag_len) == 0 &&
               h.validation_data_len == strlen(DATA) &&
               memcmp(h.validation_data, DATA, h.validation_data_len) == 0,
           "validation data");
    EXPECT(h.producer_len > 7 && memcmp(h.producer, "memimg ", 7) == 0, "producer %.*s",
           (int)h.producer_len, (const char *)h.producer);

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_region_count(NULL, &n));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_region_count(img, NULL));
    ST(MEMIMG_OK, memimg_image_region_count(img, &n));
    EXPECT(n == 1, "%zu regions", n);
    struct memimg_region_info ri = {.struct_size = sizeof ri};
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_region(NULL, 0, &ri));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_region(img, 0, NULL));
    ST(MEMIMG_E_OUT_OF_RANGE, memimg_image_region(img, 1, &ri));
    LAST_HAS("region 1 does not exist");
    ST(MEMIMG_E_OUT_OF_RANGE, memimg_image_region(img, SIZE_MAX, &ri));
    ST(MEMIMG_OK, memimg_image_region(img, 0, &ri));
    EXPECT(ri.start == BASE && ri.len == NPAGES * ps && ri.kind == MEMIMG_KIND_HEAP &&
               ri.name_len == strlen(NAME) && memcmp(ri.name, NAME, ri.name_len) == 0 &&
               ri.extent_count == 3,
           "region 0: %#llx+%#llx, %u extents", (unsigned long long)ri.start,
           (unsigned long long)ri.len, ri.extent_count);

    size_t ne = 0;
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_extent_count(NULL, &ne));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_extent_count(img, NULL));
    ST(MEMIMG_OK, memimg_image_extent_count(img, &ne));
    EXPECT(ne == 3, "%zu extents", ne);
    struct memimg_extent_info e = {.struct_size = sizeof e};
    static const memimg_extent_kind kinds[] = {MEMIMG_EXTENT_DATA, MEMIMG_EXTENT_ZERO,
                                               MEMIMG_EXTENT_DATA};
    uint64_t at = BASE;
    for (size_t i = 0; i < ne && i < 3; i++) {
        ST(MEMIMG_OK, memimg_image_extent(img, ri.first_extent + i, &e));
        EXPECT(e.kind == kinds[i] && e.addr == at && e.region == 0 && e.len == e.page_count * ps,
               "extent %zu: kind %u at %#llx", i, e.kind, (unsigned long long)e.addr);
        at += e.len;
    }
    EXPECT(at == BASE + NPAGES * ps, "the extents do not cover the region");
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_extent(NULL, 0, &e));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_extent(img, 0, NULL));
    ST(MEMIMG_E_OUT_OF_RANGE, memimg_image_extent(img, ne, &e));

    memset(buf, 0xcc, NPAGES * ps);
    ST(MEMIMG_OK, memimg_image_read_at(img, BASE, buf, NPAGES * ps));
    EXPECT(differs(buf) < 0, "plain.img read_at differs at %ld", differs(buf));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_read_at(NULL, BASE, buf, 1));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_read_at(img, BASE, NULL, 10));
    ST(MEMIMG_OK, memimg_image_read_at(img, BASE, NULL, 0));
    ST(MEMIMG_E_NOT_CAPTURED, memimg_image_read_at(img, BASE - ps, buf, 10));
    LAST_HAS("was not captured");
    struct memimg_error_info info = {.struct_size = sizeof info};
    ST(MEMIMG_OK, memimg_last_error(&info));
    EXPECT((info.location.present & MEMIMG_LOCATION_ADDR) && info.location.addr == BASE - ps,
           "not captured: location");
    ST(MEMIMG_E_NOT_CAPTURED, memimg_image_read_at(img, BASE + NPAGES * ps - 4, buf, 8));
    ST(MEMIMG_E_NOT_CAPTURED, memimg_image_read_at(img, UINT64_MAX - 2, buf, 8));

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_free((struct memimg_image *)k));
    ST(MEMIMG_OK, memimg_image_free(img));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_image_free(img));
    ST(MEMIMG_OK, memimg_image_free(NULL));

    /* A damaged chunk: opening succeeds (chunks are checked when read),
     * reading it fails with its location. */
    ST(MEMIMG_OK, memimg_image_open(path_of("damaged.img"), NULL, &img));
    ST(MEMIMG_E_CHECKSUM, memimg_image_read_at(img, BASE, buf, 16));
    ST(MEMIMG_OK, memimg_last_error(&info));
    EXPECT((info.location.present & MEMIMG_LOCATION_CHUNK) && info.location.chunk == 0 &&
               (info.location.present & MEMIMG_LOCATION_OFFSET),
           "damaged read: location %#x", info.location.present);
    ST(MEMIMG_OK, memimg_image_free(img));
    free(buf);
    ST(MEMIMG_OK, memimg_key_free(k));
    ST(MEMIMG_OK, memimg_key_free(wrong));
}

/* ---- verifying ---- */

static struct memimg_report *verify(const char *image, struct memimg_key *k, uint32_t flags,
                             struct memimg_report_info *ri) {
    struct memimg_verify_options o = {.struct_size = sizeof o, .flags = flags};
    struct memimg_report *r = NULL;
    ST(MEMIMG_OK, memimg_verify(path_of(image), k, &o, &r));
    ri->struct_size = sizeof *ri;
    ST(MEMIMG_OK, memimg_report_info(r, ri));
    return r;
}

static void test_verify(void) {
    struct memimg_report *r = (struct memimg_report *)&r;
    struct memimg_key *k = key_of(key_bytes), *wrong = key_of(wrong_key_bytes);
    struct memimg_report_info ri = {.struct_size = sizeof ri};
    struct memimg_verify_options o = {.struct_size = sizeof o, .flags = 2};
    const char *text = NULL;

    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_verify(NULL, NULL, NULL, &r));
    EXPECT(r == NULL, "*out is NULL after a failure");
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_verify(path_of("plain.img"), NULL, NULL, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_verify(path_of("plain.img"), NULL, &o, &r));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_verify(path_of("plain.img"), (struct memimg_key *)&o, NULL, &r));

    r = verify("plain.img", NULL, MEMIMG_VERIFY_DECODE, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_INTACT && ri.problem_count == 0 && ri.chunks_checked > 0 &&
               ri.chunks_decoded == ri.chunks_checked && ri.unlocked && !ri.fatal_message,
           "plain.img: verdict %u, %zu problems", ri.verdict, ri.problem_count);
    ST(MEMIMG_OK, memimg_report_text(r, &text));
    EXPECT(text && strncmp(text, "intact\n", 7) == 0, "text: %s", text);
    ST(MEMIMG_OK, memimg_report_free(r));

    /* Damage: the verdict, and each problem with its location. */
    r = verify("damaged.img", NULL, 0, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_DAMAGED && ri.problem_count == 1, "damaged.img: %u, %zu",
           ri.verdict, ri.problem_count);
    struct memimg_problem pr = {.struct_size = sizeof pr};
    ST(MEMIMG_OK, memimg_report_problem(r, 0, &pr));
    EXPECT(pr.status == MEMIMG_E_CHECKSUM, "problem status %s", memimg_status_name(pr.status));
    EXPECT((pr.location.present & MEMIMG_LOCATION_OFFSET) && pr.location.offset == ps &&
               (pr.location.present & MEMIMG_LOCATION_CHUNK) && pr.location.chunk == 0 &&
               (pr.location.present & MEMIMG_LOCATION_ADDR) && pr.location.addr == BASE,
           "problem location %#x offset %#llx", pr.location.present,
           (unsigned long long)pr.location.offset);
    EXPECT(strstr(pr.message, "checksum mismatch") && strstr(pr.text, "offset 0x") &&
               strstr(pr.text, pr.message),
           "problem text: %s", pr.text);
    ST(MEMIMG_OK, memimg_report_text(r, &text));
    EXPECT(strncmp(text, "DAMAGED, 1 problem\n", 19) == 0 && strstr(text, pr.text), "text: %s",
           text);
    ST(MEMIMG_E_OUT_OF_RANGE, memimg_report_problem(r, 1, &pr));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_problem(r, 0, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_problem(NULL, 0, &pr));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_info(r, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_info(NULL, &ri));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_text(r, NULL));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_text(NULL, &text));
    ST(MEMIMG_OK, memimg_report_free(r));
    ST(MEMIMG_E_INVALID_ARGUMENT, memimg_report_free(r));
    ST(MEMIMG_OK, memimg_report_free(NULL));

    /* Unable to check: a missing file, a wrong key. */
    r = verify("missing.img", NULL, 0, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_UNCHECKED && ri.fatal_status == MEMIMG_E_IO &&
               ri.fatal_message && strstr(ri.fatal_message, "missing.img"),
           "missing.img: verdict %u, %s", ri.verdict, ri.fatal_message);
    ST(MEMIMG_OK, memimg_report_text(r, &text));
    EXPECT(strncmp(text, "unable to check: ", 17) == 0, "text: %s", text);
    ST(MEMIMG_OK, memimg_report_free(r));
    r = verify("enc.img", wrong, 0, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_UNCHECKED && ri.fatal_status == MEMIMG_E_WRONG_KEY,
           "enc.img with a wrong key: verdict %u, %s", ri.verdict,
           memimg_status_name(ri.fatal_status));
    ST(MEMIMG_OK, memimg_report_free(r));
    r = verify("enc.img", k, MEMIMG_VERIFY_DECODE, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_INTACT && ri.chunks_decoded > 0, "enc.img: verdict %u",
           ri.verdict);
    ST(MEMIMG_OK, memimg_report_free(r));
    /* Without the key, the stored bytes are still checked. */
    r = verify("enc.img", NULL, 0, &ri);
    EXPECT(ri.verdict == MEMIMG_VERIFY_INTACT && !ri.unlocked, "enc.img without key");
    ST(MEMIMG_OK, memimg_report_free(r));

    ST(MEMIMG_OK, memimg_key_free(k));
    ST(MEMIMG_OK, memimg_key_free(wrong));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: errors DIR\n");
        return 2;
    }
    dir = argv[1];
    ps = (size_t)sysconf(_SC_PAGESIZE);
    no_lazy = getenv("MEMIMG_CTEST_NO_LAZY");
    for (int i = 0; i < 32; i++) {
        key_bytes[i] = (uint8_t)(0x42 + i);
        wrong_key_bytes[i] = (uint8_t)(0x43 + i);
    }
    test_versions();
    test_keys();
    test_persister_arguments();
    test_persister_failures();
    make_images();
    test_restore_failures();
    test_restore();
    test_image();
    test_verify();
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
