/*
 * crash_workload.c - the C program the death-dump benchmark crashes, built three ways by
 * benchmarks/cbuild.py at run time:
 *
 *   (plain)     registers nothing: the reference generator and the no-dump baseline
 *   -DUSE_MCD   registers A and B with libminicoredumper (ident NULL: the bytes go into the core
 *               at their own addresses)
 *   -DUSE_KMD   registers A and B in a kmemdump shared table (contrib/c/kmemdump_table.h)
 *
 * Memory: A (1 MiB) and B (64 MiB) hold records derived from SEED; C (512 MiB) is touched and
 * filled with a 16-byte tag and never registered, so a dump that holds any of it is caught.
 * Each 64-byte record of A and B is an 8-byte counter, an 8-byte pseudo-random word, its 16 hex
 * digits in ASCII and 32 bytes of small repeating numbers: about as compressible as a heap of
 * small objects, neither all zeros nor noise.
 *
 *   crash_workload gen SEED     write A then B to stdout (the reference a dump is compared with)
 *   crash_workload crash SEED   print "ready PID A B C SIZE_A SIZE_B SIZE_C TAGHEX", wait for one
 *                               byte on stdin, print "crash T_NS" (CLOCK_MONOTONIC) and store
 *                               through a null pointer (SIGSEGV); exit 3 on EOF instead
 *   crash_workload live SEED    the same, but exit 0 on the byte (or EOF)
 *
 * Nothing sleeps: the benchmark synchronises on the two pipes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if defined(USE_MCD)
#include <minicoredumper.h>
#elif defined(USE_KMD)
#define KMD_TABLE_IMPLEMENTATION
#include "kmemdump_table.h"
#endif

#define SIZE_A (1ul << 20)
#define SIZE_B (64ul << 20)
#define SIZE_C (512ul << 20)

static uint64_t state;

static uint64_t next_word(void) { /* splitmix64 */
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill(unsigned char *p, size_t n, uint64_t first) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i += 64) {
        uint64_t counter = first + i / 64, word = next_word();
        memcpy(p + i, &counter, 8);
        memcpy(p + i + 8, &word, 8);
        for (int d = 0; d < 16; d++) p[i + 16 + d] = (unsigned char)hex[(word >> (4 * d)) & 15];
        for (int d = 0; d < 32; d++) p[i + 32 + d] = (unsigned char)((counter + (uint64_t)d) % 7);
    }
}

static void *map(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

static void write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            perror("write");
            exit(2);
        }
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s gen|crash|live SEED\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    uint64_t seed = strtoull(argv[2], NULL, 0);
    state = seed;
    unsigned char *a = map(SIZE_A), *b = map(SIZE_B);
    fill(a, SIZE_A, 0);
    fill(b, SIZE_B, SIZE_A / 64);
    if (!strcmp(mode, "gen")) {
        write_all(1, a, SIZE_A);
        write_all(1, b, SIZE_B);
        return 0;
    }

    unsigned char tag[16];
    memcpy(tag, "UNREG-C:", 8);
    memcpy(tag + 8, &seed, 8);
    unsigned char *c = map(SIZE_C);
    for (size_t i = 0; i < SIZE_C; i += 16) memcpy(c + i, tag, 16);

#if defined(USE_MCD)
    if (mcd_dump_data_register_bin(NULL, 1, NULL, a, SIZE_A, MCD_DATA_PTR_DIRECT | MCD_LENGTH_DIRECT) ||
        mcd_dump_data_register_bin(NULL, 1, NULL, b, SIZE_B, MCD_DATA_PTR_DIRECT | MCD_LENGTH_DIRECT)) {
        fprintf(stderr, "mcd_dump_data_register_bin failed\n");
        return 2;
    }
#elif defined(USE_KMD)
    struct kmd_table table;
    if (kmd_table_open(&table, NULL, 16) != 0) {
        perror("kmemdump table");
        return 2;
    }
    if (kmd_register(&table, KMD_ID_USER_START, "bufA", a, SIZE_A, KMD_KIND_BUFFER) != 0 ||
        kmd_register(&table, KMD_ID_USER_START + 1, "bufB", b, SIZE_B, KMD_KIND_BUFFER) != 0) {
        perror("kmemdump register");
        return 2;
    }
#endif

    char line[256], taghex[33];
    for (int i = 0; i < 16; i++) snprintf(taghex + 2 * i, 3, "%02x", tag[i]);
    int n = snprintf(line, sizeof line, "ready %d %#lx %#lx %#lx %lu %lu %lu %s\n", (int)getpid(),
                     (unsigned long)a, (unsigned long)b, (unsigned long)c, SIZE_A, SIZE_B, SIZE_C, taghex);
    write_all(1, line, (size_t)n);

    char go;
    ssize_t r;
    do r = read(0, &go, 1);
    while (r < 0 && errno == EINTR);
    if (!strcmp(mode, "live")) {
#if defined(USE_KMD)
        kmd_table_close(&table);
#endif
        return 0;
    }
    if (r != 1) return 3;

    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    n = snprintf(line, sizeof line, "crash %llu\n",
                 (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
    write_all(1, line, (size_t)n);
    *(volatile int *)0 = 1; /* SIGSEGV */
    return 4;
}
