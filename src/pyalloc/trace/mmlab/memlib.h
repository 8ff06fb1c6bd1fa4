/* The memory system a malloc-lab allocator (mm.c) builds on, as pyalloc's
 * lab provides it: one fixed area, reserved up front, grown like sbrk. */
#ifndef PYALLOC_MEMLIB_H
#define PYALLOC_MEMLIB_H
#include <stddef.h>
#include <stdint.h>

void mem_init(void);
void mem_deinit(void);
void *mem_sbrk(intptr_t incr);   /* the old break, or (void *)-1 when the area is full */
void mem_reset_brk(void);        /* back to an empty heap, before each trace */
void *mem_heap_lo(void);         /* the first byte of the heap */
void *mem_heap_hi(void);         /* the last byte of the heap */
size_t mem_heapsize(void);
size_t mem_pagesize(void);

#endif
