/*
 * arena.c: persist a pointer-rich structure through the C ABI of memimg,
 * and get it back in a new process with each restore strategy.
 *
 *   cargo build --release -p memimg-capi
 *   cc -O2 -Wall -I capi/include capi/examples/arena.c \
 *      -L target/release -lmemimg -Wl,-rpath,"$PWD/target/release" -o arena
 *   ./arena                    # 3,000,000 strings
 *   ARENA_N=500000 ./arena
 *
 * The first run builds a hash map of short strings in an arena at a fixed
 * address (every pointer in it is absolute), persists the arena twice (raw,
 * and zstd-compressed) with its size as validation data, then runs itself
 * again as a new process once per strategy. Each child restores the arena
 * at its address, walks every bucket, looks every key up and checks every
 * value, and reports its times.
 *
 * The arena holds the same bytes as the one capture/examples/arena.rs
 * builds for the same ARENA_N (same layout, keys, hash and allocation), so
 * the two can be timed on the same data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "memimg.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define ARENA 0x200000000000ULL
#define RESERVE (4ULL << 30)
#define MAGIC 0x4152454e41310001ULL
#define TAG "arena-example"

/* The arena's first bytes. */
struct head {
    uint64_t magic;
    uint64_t used;
    struct node **buckets;
    uint64_t nbuckets;
    uint64_t count;
};

/* A map entry: the key's bytes follow the node. */
struct node {
    struct node *next;
    uint64_t hash;
    uint64_t value;
    uint32_t len;
};

static uint64_t arena_next;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Prints the library's last error and exits. */
static void die(const char *what, memimg_status s) {
    fprintf(stderr, "arena: %s: %s: %s\n", what, memimg_status_name(s), memimg_last_error_message());
    exit(1);
}

#define CALL(what, call)                                                                           \
    do {                                                                                           \
        memimg_status s_ = (call);                                                                 \
        if (s_ != MEMIMG_OK)                                                                       \
            die(what, s_);                                                                         \
    } while (0)

static void *alloc(size_t size, size_t align) {
    uint64_t a = (arena_next + align - 1) / align * align;
    arena_next = a + size;
    if (arena_next >= ARENA + RESERVE) {
        fprintf(stderr, "arena: full\n");
        exit(1);
    }
    return (void *)(uintptr_t)a;
}

/* FNV-1a. */
static uint64_t hash(const char *b, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)b[i]) * 0x100000001b3ULL;
    return h;
}

static size_t key(uint64_t i, char *out, size_t cap) {
    return (size_t)snprintf(out, cap, "k%" PRIu64 "-%" PRIx64, i, (uint64_t)(i * 0x9e3779b9ULL));
}

static uint64_t value_of(uint64_t i) { return i * 7 + 1; }

static struct head *head(void) { return (struct head *)(uintptr_t)ARENA; }

static uint64_t next_pow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* Builds the map in a fresh arena; returns the bytes used, whole pages. */
static uint64_t build(uint64_t n) {
    void *p = mmap((void *)(uintptr_t)ARENA, RESERVE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_NORESERVE, -1, 0);
    if (p != (void *)(uintptr_t)ARENA) {
        fprintf(stderr, "arena: the address %#llx is taken\n", ARENA);
        exit(1);
    }
    arena_next = ARENA + sizeof(struct head);
    uint64_t nb = next_pow2(n);
    struct node **buckets = alloc(nb * sizeof(struct node *), 8);
    char k[48];
    for (uint64_t i = 0; i < n; i++) {
        size_t len = key(i, k, sizeof k);
        uint64_t h = hash(k, len);
        struct node *node = alloc(sizeof(struct node) + len, 8);
        struct node **slot = &buckets[h & (nb - 1)];
        node->next = *slot;
        node->hash = h;
        node->value = value_of(i);
        node->len = (uint32_t)len;
        memcpy(node + 1, k, len);
        *slot = node;
    }
    uint64_t used = (arena_next - ARENA + 4095) / 4096 * 4096;
    *head() = (struct head){MAGIC, used, buckets, nb, n};
    return used;
}

static void wrong(const char *what, uint64_t i) {
    fprintf(stderr, "arena: %s (at %" PRIu64 ")\n", what, i);
    exit(2);
}

/* Walks every bucket and looks every key up; exits on any difference.
 * Returns the number of nodes checked. */
static uint64_t walk(uint64_t n) {
    const struct head *h = head();
    if (h->magic != MAGIC)
        wrong("arena head is wrong", 0);
    if (h->count != n)
        wrong("node count is wrong", h->count);
    uint64_t seen = 0;
    for (uint64_t b = 0; b < h->nbuckets; b++)
        for (const struct node *p = h->buckets[b]; p; p = p->next) {
            if ((p->hash & (h->nbuckets - 1)) != b)
                wrong("node in the wrong bucket", b);
            seen++;
        }
    if (seen != n)
        wrong("walked a wrong number of nodes", seen);
    char k[48];
    for (uint64_t i = 0; i < n; i++) {
        size_t len = key(i, k, sizeof k);
        uint64_t hv = hash(k, len);
        const struct node *p = h->buckets[hv & (h->nbuckets - 1)];
        for (;; p = p->next) {
            if (!p)
                wrong("a key is missing", i);
            if (p->hash == hv && p->len == len && memcmp(p + 1, k, len) == 0)
                break;
        }
        if (p->value != value_of(i))
            wrong("a key has the wrong value", i);
    }
    return seen;
}

static memimg_strategy strategy_of(const char *s) {
    if (strcmp(s, "mmap") == 0)
        return MEMIMG_STRATEGY_MMAP;
    if (strcmp(s, "eager") == 0)
        return MEMIMG_STRATEGY_EAGER;
    if (strcmp(s, "lazy") == 0)
        return MEMIMG_STRATEGY_LAZY;
    return MEMIMG_STRATEGY_AUTO;
}

static const char *strategy_name(memimg_strategy s) {
    switch (s) {
    case MEMIMG_STRATEGY_MMAP: return "mmap";
    case MEMIMG_STRATEGY_EAGER: return "eager";
    case MEMIMG_STRATEGY_LAZY: return "lazy";
    default: return "auto";
    }
}

/* The child: restore, walk, report one RESULT line. */
static int child(const char *strategy, const char *img, uint64_t n) {
    struct memimg_restore_options o = {
        .struct_size = sizeof o,
        .strategy = strategy_of(strategy),
        .flags = MEMIMG_RESTORE_CHECK_VALIDATION,
        .validation_tag = (const uint8_t *)TAG,
        .validation_tag_len = strlen(TAG),
        .validation_data = (const uint8_t *)&n,
        .validation_data_len = sizeof n,
    };
    struct memimg_restored *r = NULL;
    double t = now_ms();
    memimg_status s = memimg_restore(img, &o, &r);
    double restore_ms = now_ms() - t;
    if (s == MEMIMG_E_STRATEGY_UNAVAILABLE) {
        printf("UNAVAILABLE %s\n", memimg_last_error_message());
        return 3;
    }
    if (s != MEMIMG_OK)
        die("restoring", s);
    CALL("prefetching", memimg_restored_prefetch(r));
    t = now_ms();
    uint64_t checked = walk(n);
    double walk_ms = now_ms() - t;
    struct memimg_restore_info info = {.struct_size = sizeof info};
    CALL("restore info", memimg_restored_info(r, &info));
    struct memimg_lazy_stats st = {.struct_size = sizeof st};
    CALL("finishing", memimg_restored_finish(r, &st));
    if (st.error)
        wrong(st.error, 0);
    printf("RESULT %s %.3f %.1f %" PRIu64 " %" PRIu64 "\n", strategy_name(info.strategy), restore_ms,
           walk_ms, st.faults, checked);
    /* The arena stays mapped: it belongs to this program now. */
    CALL("freeing the restore handle", memimg_restored_free(r));
    return 0;
}

static double persist(const char *path, uint64_t used, uint64_t n, memimg_codec codec,
                      uint64_t *file_len) {
    double t = now_ms();
    struct memimg_persister *p = NULL;
    CALL("making a persister", memimg_persister_new(&p));
    struct memimg_region_spec spec = {
        .struct_size = sizeof spec,
        .addr = ARENA,
        .len = used,
        .name = "arena",
        .kind = MEMIMG_KIND_HEAP,
        .prot = MEMIMG_PROT_READ | MEMIMG_PROT_WRITE,
    };
    CALL("adding the arena", memimg_persister_add_region(p, &spec));
    CALL("setting validation data",
         memimg_persister_set_validation(p, (const uint8_t *)TAG, strlen(TAG),
                                         (const uint8_t *)&n, sizeof n));
    CALL("setting the codec", memimg_persister_set_codec(p, codec, codec == MEMIMG_CODEC_ZSTD));
    struct memimg_write_stats st = {.struct_size = sizeof st};
    CALL("writing the image", memimg_persister_write(p, path, &st));
    CALL("freeing the persister", memimg_persister_free(p));
    *file_len = st.file_len;
    return now_ms() - t;
}

/* Runs this program as `arena restore STRATEGY IMG` and reads its output. */
static int run_child(const char *strategy, const char *img, char *out, size_t cap) {
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl("/proc/self/exe", "arena", "restore", strategy, img, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t got = 0;
    ssize_t k;
    while (got + 1 < cap && (k = read(fd[0], out + got, cap - 1 - got)) > 0)
        got += (size_t)k;
    out[got] = 0;
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    const char *env = getenv("ARENA_N");
    uint64_t n = env ? strtoull(env, NULL, 10) : 3000000;
    if (argc == 4 && strcmp(argv[1], "restore") == 0)
        return child(argv[2], argv[3], n);
    if (memimg_abi_version() < MEMIMG_ABI_VERSION) {
        fprintf(stderr, "arena: libmemimg has ABI version %u, this program needs %u\n",
                memimg_abi_version(), MEMIMG_ABI_VERSION);
        return 1;
    }

    char dir[] = "/tmp/memimg-arena-c-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("arena: mkdtemp");
        return 1;
    }
    char raw[64], zst[64];
    snprintf(raw, sizeof raw, "%s/arena.img", dir);
    snprintf(zst, sizeof zst, "%s/arena-zstd.img", dir);

    double t = now_ms();
    uint64_t used = build(n);
    printf("built a hash map of %" PRIu64 " strings in a %" PRIu64 " MiB arena at %#llx in %.0f ms\n",
           n, used >> 20, ARENA, now_ms() - t);
    t = now_ms();
    walk(n);
    printf("walking and checking it in place takes %.0f ms\n", now_ms() - t);
    uint64_t len;
    double ms = persist(raw, used, n, MEMIMG_CODEC_NONE, &len);
    printf("persisted with codec none: %" PRIu64 " MiB file in %.0f ms\n", len >> 20, ms);
    ms = persist(zst, used, n, MEMIMG_CODEC_ZSTD, &len);
    printf("persisted with codec zstd:1: %" PRIu64 " MiB file in %.0f ms\n", len >> 20, ms);

    printf("\n%-10s %-8s %12s %14s %8s %10s\n", "strategy", "image", "restore ms", "walk+check ms",
           "faults", "checked");
    static const struct {
        const char *strategy, *image;
        int zstd;
    } runs[] = {{"mmap", "raw", 0}, {"eager", "zstd:1", 1}, {"lazy", "zstd:1", 1}, {"auto", "raw", 0}};
    int failed = 0, done = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char out[4096];
        int rc = run_child(runs[i].strategy, runs[i].zstd ? zst : raw, out, sizeof out);
        char name[16];
        double restore_ms, walk_ms;
        uint64_t faults, checked;
        if (rc == 0 && sscanf(out, "RESULT %15s %lf %lf %" SCNu64 " %" SCNu64, name, &restore_ms,
                              &walk_ms, &faults, &checked) == 5) {
            /* A restore asked for auto shows what it chose: auto=mmap. */
            char label[32];
            if (strcmp(runs[i].strategy, name) == 0)
                snprintf(label, sizeof label, "%s", name);
            else
                snprintf(label, sizeof label, "%s=%s", runs[i].strategy, name);
            printf("%-10s %-8s %12.3f %14.1f %8" PRIu64 " %10" PRIu64 "\n", label, runs[i].image,
                   restore_ms, walk_ms, faults, checked);
            done++;
        } else if (rc == 3 && strncmp(out, "UNAVAILABLE ", 12) == 0) {
            out[strcspn(out, "\n")] = 0;
            printf("%-10s %-8s unavailable here: %s\n", runs[i].strategy, runs[i].image, out + 12);
        } else {
            printf("%-10s %-8s FAILED (exit %d): %s\n", runs[i].strategy, runs[i].image, rc, out);
            failed++;
        }
    }
    unlink(raw);
    unlink(zst);
    rmdir(dir);
    printf("\n%d of %zu restores walked and checked all %" PRIu64 " nodes\n", done,
           sizeof runs / sizeof runs[0], n);
    return failed ? 1 : 0;
}
