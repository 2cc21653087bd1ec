/*
 * kmemdump_table.h - publish memory regions to the kmemdump collector from C.
 *
 * A single-header producer for the shared table, format v1 (docs/formats.md), with the pid-namespace
 * identity and the liveness lock that let a collector in another pid namespace (a per-host collector
 * watching containers) find the process or know it is alive. A C, C++ or Rust (via
 * FFI) program registers the regions it cares about; `kmemdump watch`, `kmemdump run --no-autoinit`
 * or `kmemdump dump PID` then copy exactly those regions into an ELF core image when the program
 * stops feeding its watchdog, dies, or is asked for a dump.
 *
 *     #define KMD_TABLE_IMPLEMENTATION      (in one .c file)
 *     #include "kmemdump_table.h"
 *
 *     static char banner[] = "my service 1.2.3 (built ...)";
 *     struct kmd_table t;
 *     if (kmd_table_open(&t, NULL, 64) != 0) perror("kmemdump");
 *     kmd_register(&t, KMD_ID_BANNER, "banner", banner, sizeof banner, KMD_KIND_BUFFER);
 *     kmd_watchdog(&t, 5000000000ull);         // 5 s
 *     for (;;) { kmd_feed(&t); serve_one(); }
 *
 * Registration is not thread-safe: serialise kmd_register/kmd_unregister with your own lock.
 * After a fork() not followed by exec, the child should close(t.live_fd): the liveness lock belongs
 * to the descriptor both share, and would otherwise say the parent lives as long as the child does.
 * kmd_feed may be called from any one thread. Linux only; little-endian CPUs (as the format).
 */
#ifndef KMEMDUMP_TABLE_H
#define KMEMDUMP_TABLE_H

#include <stddef.h>
#include <stdint.h>

#define KMD_MAGIC "KMDTABLE"
#define KMD_VERSION 1
#define KMD_VALID 0x56414C49u /* 'VALI', as the Qualcomm minidump region table */

enum { KMD_STATE_STARTING = 0, KMD_STATE_RUNNING = 1, KMD_STATE_EXITING = 2 };
/* Header flags: the producer holds a shared lock on byte 0 of the file while it lives (an
 * open-file-description lock: the kernel drops it when the process dies, whatever pid namespace
 * the reader is in); the heartbeat comes from a background thread. */
enum { KMD_FLAG_LIVE_LOCK = 1, KMD_FLAG_FEEDER = 2 };
enum { KMD_KIND_BUFFER = 1, KMD_KIND_OBJECT = 2, KMD_KIND_CTYPES = 3, KMD_KIND_ADDRESS = 4 };
enum { KMD_ID_BANNER = 1, KMD_ID_USER_START = 16, KMD_ID_USER_END = 1023 };
#define KMD_GRAPH_ROOT 0x80000000u /* in an entry's graph word; the depth (0..64) in bits 0-7 */

struct kmd_table_header {
    char magic[8];
    uint16_t version, header_size, entry_size, flags;
    uint32_t capacity, pid;
    uint64_t start_time;
    uint32_t py_hexversion, state;
    uint64_t generation, heartbeat, last_feed_ns, watchdog_timeout_ns;
    uint32_t collector_pid, count;
    uint64_t created_ns;
    uint64_t arena_base, arena_size; /* a persistent arena (docs/formats.md); 0, 0: none */
    uint64_t pidns_ino, pidns_dev;   /* stat("/proc/self/ns/pid"): st_ino, st_dev; 0, 0: not recorded */
    uint8_t reserved[8];
};

struct kmd_table_entry {
    char name[32];
    uint32_t id, valid;
    uint64_t address, size;
    uint16_t kind, flags;
    uint32_t graph; /* 0, or KMD_GRAPH_ROOT | depth: a Python object graph walked at dump time */
};

_Static_assert(sizeof(struct kmd_table_header) == 128, "header is 128 bytes");
_Static_assert(offsetof(struct kmd_table_header, generation) == 40, "generation at 40");
_Static_assert(offsetof(struct kmd_table_header, collector_pid) == 72, "collector_pid at 72");
_Static_assert(offsetof(struct kmd_table_header, arena_base) == 88, "arena_base at 88");
_Static_assert(offsetof(struct kmd_table_header, pidns_ino) == 104, "pidns_ino at 104");
_Static_assert(offsetof(struct kmd_table_header, pidns_dev) == 112, "pidns_dev at 112");
_Static_assert(sizeof(struct kmd_table_entry) == 64, "entry is 64 bytes");
_Static_assert(offsetof(struct kmd_table_entry, address) == 40, "address at 40");

struct kmd_table {
    struct kmd_table_header *header;
    struct kmd_table_entry *entries;
    size_t length;
    int live_fd; /* holds the liveness lock; -1 when none */
    char path[4096];
};

/* Create and publish the table in `dir` (NULL: $KMEMDUMP_DIR, else /dev/shm/kmemdump-<euid>).
 * Returns 0, or -1 with errno set. */
int kmd_table_open(struct kmd_table *t, const char *dir, uint32_t capacity);
/* Publish a region; returns 0, or -1 with errno: EINVAL (bad id/size/name), EEXIST (id in use), ENOSPC (full). */
int kmd_register(struct kmd_table *t, uint32_t id, const char *name, const void *address, uint64_t size,
                 uint16_t kind);
/* Remove a region; -1 with ENOENT when the id is not registered. */
int kmd_unregister(struct kmd_table *t, uint32_t id);
/* Arm (timeout > 0) or disarm (0) the watchdog; arming counts as a feed. Arming with a new timeout
 * touches the table file (its times), so that a collector reads it at once. */
void kmd_watchdog(struct kmd_table *t, uint64_t timeout_ns);
/* Beat the heartbeat: two aligned stores and a clock read. */
void kmd_feed(struct kmd_table *t);
/* On a clean exit: mark EXITING and remove the file (a crash or hang leaves it for the collector). */
void kmd_table_close(struct kmd_table *t);

#ifdef KMD_TABLE_IMPLEMENTATION

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif
#ifndef F_OFD_SETLK
#define F_OFD_SETLK 37 /* Linux >= 3.15; glibc defines it with _GNU_SOURCE */
#endif

static uint64_t kmd__clock(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int kmd__start_time(uint64_t *out) {
    char buf[4096];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return -1;
    p += 2;                      /* field 3, the state */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    *out = strtoull(p, NULL, 10);
    return 0;
}

static int kmd__private_dir(const char *dir) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return -1;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    int bad = fstat(fd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 022);
    close(fd);
    if (bad) { errno = EPERM; return -1; }
    return 0;
}

static void kmd__generation_bump(struct kmd_table *t) {
    __atomic_store_n(&t->header->generation, t->header->generation + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void kmd__grant(struct kmd_table *t) {
    static uint32_t granted;
    uint32_t pid = __atomic_load_n(&t->header->collector_pid, __ATOMIC_RELAXED);
    if (pid && pid != granted) {
        granted = pid;
        prctl(PR_SET_PTRACER, (unsigned long)pid, 0, 0, 0); /* EINVAL without Yama: harmless */
    }
}

int kmd_table_open(struct kmd_table *t, const char *dir, uint32_t capacity) {
    char dirbuf[4096], tmp[4096];
    uint64_t start;
    if (capacity == 0 || capacity > 65536) { errno = EINVAL; return -1; }
    if (!dir) dir = getenv("KMEMDUMP_DIR");
    if (!dir || !*dir) {
        snprintf(dirbuf, sizeof dirbuf, "/dev/shm/kmemdump-%u", (unsigned)geteuid());
        dir = dirbuf;
    }
    if (kmd__private_dir(dir) != 0 || kmd__start_time(&start) != 0) return -1;
    int n1 = snprintf(t->path, sizeof t->path, "%s/%d-%llu.table", dir, (int)getpid(), (unsigned long long)start);
    int n2 = snprintf(tmp, sizeof tmp, "%s/.%d-%llu-0.tmp", dir, (int)getpid(), (unsigned long long)start);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof t->path || (size_t)n2 >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    t->length = sizeof(struct kmd_table_header) + (size_t)capacity * sizeof(struct kmd_table_entry);
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    void *map = MAP_FAILED;
    if (fchmod(fd, 0600) == 0 && ftruncate(fd, (off_t)t->length) == 0)
        map = mmap(NULL, t->length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { close(fd); unlink(tmp); return -1; }
    /* the liveness lock, taken before the file has its name: a reader never sees the flag without it */
    struct flock live = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1, .l_pid = 0};
    t->live_fd = fcntl(fd, F_OFD_SETLK, &live) == 0 ? fd : -1;
    if (t->live_fd < 0) close(fd);
    t->header = map;
    t->entries = (struct kmd_table_entry *)((char *)map + sizeof(struct kmd_table_header));
    struct kmd_table_header *h = t->header; /* the file is all zero: fill in the header */
    memcpy(h->magic, KMD_MAGIC, 8);
    h->version = KMD_VERSION;
    h->header_size = sizeof(struct kmd_table_header);
    h->entry_size = sizeof(struct kmd_table_entry);
    h->capacity = capacity;
    h->pid = (uint32_t)getpid();
    h->start_time = start;
    h->created_ns = kmd__clock(CLOCK_REALTIME);
    struct stat ns;
    if (stat("/proc/self/ns/pid", &ns) == 0) { /* lets a collector in another pid namespace find us */
        h->pidns_ino = (uint64_t)ns.st_ino;
        h->pidns_dev = (uint64_t)ns.st_dev;
    }
    if (t->live_fd >= 0) h->flags |= KMD_FLAG_LIVE_LOCK;
    __atomic_store_n(&h->state, KMD_STATE_RUNNING, __ATOMIC_RELEASE);
    if (link(tmp, t->path) != 0) { /* never replaces what is at the final name */
        int saved = errno;
        unlink(tmp);
        munmap(map, t->length);
        if (t->live_fd >= 0) close(t->live_fd);
        errno = saved;
        return -1;
    }
    unlink(tmp);
    return 0;
}

int kmd_register(struct kmd_table *t, uint32_t id, const char *name, const void *address, uint64_t size,
                 uint16_t kind) {
    struct kmd_table_header *h = t->header;
    struct kmd_table_entry *free_slot = NULL;
    if (id == 0 || size == 0 || (uint64_t)(uintptr_t)address + size < size || strlen(name) > 31 ||
        kind < KMD_KIND_BUFFER || kind > KMD_KIND_ADDRESS) {
        errno = EINVAL;
        return -1;
    }
    for (uint32_t i = 0; i < h->capacity; i++) {
        struct kmd_table_entry *e = &t->entries[i];
        if (e->id == id) { errno = EEXIST; return -1; }
        if (!e->id && !free_slot) free_slot = e;
    }
    if (!free_slot) { errno = ENOSPC; return -1; }
    kmd__generation_bump(t); /* odd: readers retry */
    memset(free_slot, 0, sizeof *free_slot);
    strncpy(free_slot->name, name, sizeof free_slot->name - 1);
    free_slot->id = id;
    free_slot->valid = KMD_VALID;
    free_slot->address = (uint64_t)(uintptr_t)address;
    free_slot->size = size;
    free_slot->kind = kind;
    __atomic_store_n(&h->count, h->count + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELAXED); /* even again */
    kmd__grant(t);
    return 0;
}

int kmd_unregister(struct kmd_table *t, uint32_t id) {
    struct kmd_table_header *h = t->header;
    for (uint32_t i = 0; i < h->capacity; i++) {
        struct kmd_table_entry *e = &t->entries[i];
        if (e->id != id) continue;
        kmd__generation_bump(t);
        memset(e, 0, sizeof *e);
        __atomic_store_n(&h->count, h->count - 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        __atomic_store_n(&h->generation, h->generation + 1, __ATOMIC_RELAXED);
        kmd__grant(t);
        return 0;
    }
    errno = ENOENT;
    return -1;
}

void kmd_watchdog(struct kmd_table *t, uint64_t timeout_ns) {
    uint64_t before = t->header->watchdog_timeout_ns;
    __atomic_store_n(&t->header->watchdog_timeout_ns, timeout_ns, __ATOMIC_RELAXED);
    if (timeout_ns) kmd_feed(t);
    /* a collector reads the table when the deadline it last saw may have passed; a new timeout may
     * bring it sooner: touching the file tells a collector watching the directory to read it now */
    if (before != timeout_ns && timeout_ns) utimensat(AT_FDCWD, t->path, NULL, AT_SYMLINK_NOFOLLOW);
}

void kmd_feed(struct kmd_table *t) {
    struct kmd_table_header *h = t->header;
    __atomic_store_n(&h->last_feed_ns, kmd__clock(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
    uint64_t beat = h->heartbeat + 1;
    __atomic_store_n(&h->heartbeat, beat, __ATOMIC_RELAXED);
    if (!(beat & 1023)) kmd__grant(t);
}

void kmd_table_close(struct kmd_table *t) {
    __atomic_store_n(&t->header->state, KMD_STATE_EXITING, __ATOMIC_RELEASE);
    unlink(t->path);
    munmap(t->header, t->length);
    t->header = NULL;
    if (t->live_fd >= 0) close(t->live_fd); /* after the unlink: never a live-looking table unlocked */
    t->live_fd = -1;
}

#endif /* KMD_TABLE_IMPLEMENTATION */
#endif /* KMEMDUMP_TABLE_H */
