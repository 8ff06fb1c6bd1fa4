/* pyalloc's memlib for malloc-lab allocators: a fixed area reserved with
 * mmap (no swap is committed until pages are touched), handed out by
 * mem_sbrk. The lab reads mem_heapsize() after every op: its peak is the
 * footprint that utilization divides by, as mdriver does. */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "memlib.h"

#define MAX_HEAP ((size_t)1 << 32)  /* 4 GiB of address space */

static char *heap_lo;   /* first byte of the area */
static char *brk_at;    /* the break: one past the heap's last byte */

void mem_init(void) {
    if (heap_lo)
        return;
    void *area = mmap(NULL, MAX_HEAP, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    heap_lo = area == MAP_FAILED ? NULL : area;
    brk_at = heap_lo;
}

void mem_deinit(void) {
    if (heap_lo)
        munmap(heap_lo, MAX_HEAP);
    heap_lo = brk_at = NULL;
}

void mem_reset_brk(void) {
    mem_init();
    brk_at = heap_lo;
}

void *mem_sbrk(intptr_t incr) {
    char *old = brk_at;
    if (!heap_lo || incr < 0 || (size_t)(brk_at - heap_lo) + (size_t)incr > MAX_HEAP) {
        errno = ENOMEM;
        return (void *)-1;
    }
    brk_at += incr;
    return old;
}

void *mem_heap_lo(void) { return heap_lo; }
void *mem_heap_hi(void) { return brk_at - 1; }
size_t mem_heapsize(void) { return (size_t)(brk_at - heap_lo); }
size_t mem_pagesize(void) { return (size_t)getpagesize(); }
