/*
 * mm_implicit.c: the textbook allocator of the malloc lab, written for
 * pyalloc's lab as a starting point to copy and improve.
 *
 * Implicit free list, first fit, boundary tags, immediate coalescing.
 * Every block has a 4-byte header and a 4-byte footer holding its size
 * (a multiple of 16) with the allocated flag in bit 0. Payloads are 16-byte
 * aligned: a block's header sits 4 bytes before its payload.
 *
 *   | pad | prologue: hdr, 8 bytes, ftr | block ... | epilogue hdr |
 *
 * Replay it:  pyalloc replay --mm examples/mm_implicit.c TRACE...
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "memlib.h"
#include "mm.h"

team_t team = {"pyalloc", "the lab", "", "", ""};

#define WSIZE 4
#define DSIZE 8
#define ALIGN 16
#define CHUNK (1 << 12)
#define MAX(x, y) ((x) > (y) ? (x) : (y))

#define PACK(size, alloc) ((uint32_t)((size) | (alloc)))
#define GET(p) (*(uint32_t *)(p))
#define PUT(p, val) (*(uint32_t *)(p) = (val))
#define GET_SIZE(p) (GET(p) & ~(uint32_t)0xF)
#define GET_ALLOC(p) (GET(p) & 0x1)
#define HDRP(bp) ((char *)(bp) - WSIZE)
#define FTRP(bp) ((char *)(bp) + GET_SIZE(HDRP(bp)) - DSIZE)
#define NEXT_BLKP(bp) ((char *)(bp) + GET_SIZE(HDRP(bp)))
#define PREV_BLKP(bp) ((char *)(bp) - GET_SIZE((char *)(bp) - DSIZE))

static char *heap_listp;

static void *coalesce(void *bp) {
    size_t prev_alloc = GET_ALLOC(FTRP(PREV_BLKP(bp)));
    size_t next_alloc = GET_ALLOC(HDRP(NEXT_BLKP(bp)));
    size_t size = GET_SIZE(HDRP(bp));
    if (prev_alloc && next_alloc)
        return bp;
    if (prev_alloc) {
        size += GET_SIZE(HDRP(NEXT_BLKP(bp)));
    } else if (next_alloc) {
        size += GET_SIZE(HDRP(PREV_BLKP(bp)));
        bp = PREV_BLKP(bp);
    } else {
        size += GET_SIZE(HDRP(PREV_BLKP(bp))) + GET_SIZE(FTRP(NEXT_BLKP(bp)));
        bp = PREV_BLKP(bp);
    }
    PUT(HDRP(bp), PACK(size, 0));
    PUT(FTRP(bp), PACK(size, 0));
    return bp;
}

static void *extend_heap(size_t size) {
    char *bp = mem_sbrk((intptr_t)size);
    if (bp == (void *)-1)
        return NULL;
    PUT(HDRP(bp), PACK(size, 0));         /* the old epilogue becomes the header */
    PUT(FTRP(bp), PACK(size, 0));
    PUT(HDRP(NEXT_BLKP(bp)), PACK(0, 1)); /* new epilogue */
    return coalesce(bp);
}

int mm_init(void) {
    /* 12 bytes of padding, then a 16-byte allocated prologue, then the
     * epilogue header: it sits 4 bytes before a 16-byte boundary, where the
     * first block's payload starts. */
    char *lo = mem_sbrk(8 * WSIZE);
    if (lo == (void *)-1)
        return -1;
    memset(lo, 0, 12);
    PUT(lo + 12, PACK(ALIGN, 1)); /* prologue header */
    PUT(lo + 24, PACK(ALIGN, 1)); /* prologue footer */
    PUT(lo + 28, PACK(0, 1));     /* epilogue header */
    heap_listp = lo + 16;
    return extend_heap(CHUNK) ? 0 : -1;
}

static void *find_fit(size_t asize) {
    for (char *bp = NEXT_BLKP(heap_listp); GET_SIZE(HDRP(bp)) > 0; bp = NEXT_BLKP(bp))
        if (!GET_ALLOC(HDRP(bp)) && asize <= GET_SIZE(HDRP(bp)))
            return bp;
    return NULL;
}

static void place(void *bp, size_t asize) {
    size_t csize = GET_SIZE(HDRP(bp));
    if (csize - asize >= 2 * ALIGN) {
        PUT(HDRP(bp), PACK(asize, 1));
        PUT(FTRP(bp), PACK(asize, 1));
        bp = NEXT_BLKP(bp);
        PUT(HDRP(bp), PACK(csize - asize, 0));
        PUT(FTRP(bp), PACK(csize - asize, 0));
    } else {
        PUT(HDRP(bp), PACK(csize, 1));
        PUT(FTRP(bp), PACK(csize, 1));
    }
}

void *mm_malloc(size_t size) {
    if (size == 0)
        size = 1;
    size_t asize = (size + DSIZE + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    char *bp = find_fit(asize);
    if (!bp) {
        bp = extend_heap(MAX(asize, (size_t)CHUNK));
        if (!bp)
            return NULL;
    }
    place(bp, asize);
    return bp;
}

void mm_free(void *bp) {
    if (!bp)
        return;
    size_t size = GET_SIZE(HDRP(bp));
    PUT(HDRP(bp), PACK(size, 0));
    PUT(FTRP(bp), PACK(size, 0));
    coalesce(bp);
}

void *mm_realloc(void *ptr, size_t size) {
    if (!ptr)
        return mm_malloc(size);
    if (size == 0) {
        mm_free(ptr);
        return NULL;
    }
    void *newptr = mm_malloc(size);
    if (!newptr)
        return NULL;
    size_t old = GET_SIZE(HDRP(ptr)) - DSIZE;
    memcpy(newptr, ptr, old < size ? old : size);
    mm_free(ptr);
    return newptr;
}
