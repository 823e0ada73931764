/* Workspace cache: the kernels' per-call scratch (team buffers, packed GEMM blocks; megabytes
 * at training shapes) is kept for the next call instead of freed. glibc serves such sizes with
 * mmap and returns them with munmap, so every call page-faulted and zeroed its scratch afresh
 * (256x50x256x512 training, 1 thread: 1,000-1,800 faults per forward and per backward, most of
 * the kernel's clear_page time, 10% of the samples in perf) unless the process happened to
 * have freed a bigger mmapped block before (glibc then raises its threshold). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "fastgru.h"

#define FG_WS_SLOTS 16
#define FG_WS_MAX_BYTES ((size_t)256 << 20) /* kept in all; beyond it, blocks are freed */

static struct {
    void *p;
    size_t n;
} ws_slot[FG_WS_SLOTS];
static size_t ws_kept;
static atomic_flag ws_lock = ATOMIC_FLAG_INIT; /* held for a few loads and stores only */

static void ws_acquire(void)
{
    while (atomic_flag_test_and_set_explicit(&ws_lock, memory_order_acquire)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

static void ws_release(void) { atomic_flag_clear_explicit(&ws_lock, memory_order_release); }

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
/* fork() while another thread holds the lock would leave the child with it held for good (and
 * perhaps a half-written slot): the fork waits for it instead, and both sides release it. */
__attribute__((constructor)) static void ws_register_atfork(void)
{
    pthread_atfork(ws_acquire, ws_release, ws_release);
}
#endif

void *fg_ws_alloc(size_t bytes, size_t *got)
{
    if (!bytes) bytes = 1;
    int best = -1;
    ws_acquire();
    for (int i = 0; i < FG_WS_SLOTS; i++) /* the smallest kept block that fits */
        if (ws_slot[i].p && ws_slot[i].n >= bytes && (best < 0 || ws_slot[i].n < ws_slot[best].n))
            best = i;
    void *p = NULL;
    if (best >= 0) {
        p = ws_slot[best].p, *got = ws_slot[best].n;
        ws_slot[best].p = NULL;
        ws_kept -= *got;
    }
    ws_release();
    if (p) return p;
    if (posix_memalign(&p, 64, bytes)) return NULL;
    *got = bytes;
    return p;
}

void fg_ws_free(void *p, size_t bytes)
{
    if (!p) return;
    ws_acquire();
    int slot = -1;
    if (ws_kept + bytes <= FG_WS_MAX_BYTES)
        for (int i = 0; i < FG_WS_SLOTS && slot < 0; i++)
            if (!ws_slot[i].p) slot = i;
    if (slot >= 0) {
        ws_slot[slot].p = p, ws_slot[slot].n = bytes;
        ws_kept += bytes;
    }
    ws_release();
    if (slot < 0) free(p);
}

size_t fg_ws_trim(void)
{
    void *p[FG_WS_SLOTS];
    size_t freed = 0;
    ws_acquire(); /* take the blocks out; free them after releasing the lock */
    for (int i = 0; i < FG_WS_SLOTS; i++) {
        p[i] = ws_slot[i].p;
        if (p[i]) freed += ws_slot[i].n;
        ws_slot[i].p = NULL;
    }
    ws_kept = 0;
    ws_release();
    for (int i = 0; i < FG_WS_SLOTS; i++) free(p[i]);
    return freed;
}

size_t fg_ws_kept(void)
{
    ws_acquire();
    size_t n = ws_kept;
    ws_release();
    return n;
}

void fg_ws_poison(void)
{   /* for tests, between calls (a block handed out meanwhile may be written concurrently) */
    ws_acquire();
    for (int i = 0; i < FG_WS_SLOTS; i++)
        if (ws_slot[i].p) memset(ws_slot[i].p, 0xff, ws_slot[i].n); /* NaN in every float */
    ws_release();
}
