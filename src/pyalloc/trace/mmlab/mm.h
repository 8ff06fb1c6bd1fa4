/* The interface of a malloc-lab allocator (CS:APP): what mm.c defines. */
#ifndef PYALLOC_MM_H
#define PYALLOC_MM_H
#include <stddef.h>
#include <stdio.h>

extern int mm_init(void);
extern void *mm_malloc(size_t size);
extern void mm_free(void *ptr);
extern void *mm_realloc(void *ptr, size_t size);

/* The team record some handouts' mm.c fills in; the lab does not read it. */
typedef struct {
    char *teamname;
    char *name1;
    char *id1;
    char *name2;
    char *id2;
} team_t;
extern team_t team;

#endif
