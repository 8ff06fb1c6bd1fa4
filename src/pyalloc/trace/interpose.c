/*
 * pyalloc allocation recorder: an LD_PRELOAD interposer.
 *
 * Loaded into a dynamically linked program with LD_PRELOAD, this library
 * defines malloc, calloc, realloc, reallocarray, free, posix_memalign,
 * aligned_alloc, memalign, valloc and pvalloc.  Each forwards to the next
 * definition in the search order (the C library's, found with
 * dlsym(RTLD_NEXT)) and appends one binary record of the call to a log.
 * pyalloc.trace.record builds this file with the system C compiler and turns
 * the log into a .rep trace.
 *
 * Environment
 * -----------
 *
 *   PYALLOC_TRACE_FILE      path of the log.  Unset or empty: nothing is
 *                           recorded and every call is a plain forward.
 *   PYALLOC_TRACE_CHILDREN  "1": a process that finds the log already
 *                           created (a program started by the recorded one)
 *                           writes its own log to PATH.PID.  Otherwise such
 *                           processes are not recorded.
 *   PYALLOC_TRACE_LIMIT     stop recording after this many records (decimal).
 *
 * The first process to load the library creates PATH (O_CREAT | O_EXCL), so
 * the caller must make sure PATH does not exist beforehand.
 *
 * Log layout (native byte order, no padding)
 * ------------------------------------------
 *
 *   header, 16 bytes:   char magic[8] = "PYALREC1"; uint32 version = 1; uint32 pid
 *   records, 32 bytes:  uint32 kind; uint32 aux; uint64 ptr; uint64 size; uint64 result
 *
 *   kind  call                         ptr     size             result   aux
 *   1     malloc(size)                 0       size             pointer  0
 *   2     calloc(n, m)                 0       n*m (saturated)  pointer  0
 *   3     realloc(ptr, size)           ptr     size             pointer  0
 *   4     free(ptr)                    ptr     0                0        0
 *   5     aligned allocation           0       size             pointer  alignment
 *         (posix_memalign, aligned_alloc, memalign, valloc, pvalloc)
 *
 * A failed call is recorded with result 0; free(NULL) is not recorded.
 * reallocarray is recorded as realloc of the product.
 *
 * Order
 * -----
 *
 * The log must order calls as the heap saw them: when thread A frees p and
 * thread B's malloc then returns p, A's free must come first.  One spin lock
 * guards the buffer, and
 *
 *   free     is recorded before the real free runs (nobody can be handed p
 *            before then),
 *   malloc   is recorded after the real malloc returns (nobody else can
 *            know the pointer before then),
 *   realloc  holds the lock from before the real call until its record is
 *            buffered, since it both releases the old block and returns a
 *            new one.
 *
 * so the order of records in the log is an order consistent with every
 * pointer's lifetime.
 *
 * Reentrancy
 * ----------
 *
 * A thread-local flag is set while a hook runs; an allocation made from
 * inside a hook (by the C library itself, or by write(2) wrappers) is
 * forwarded without a record and without the lock, so the lock is never
 * taken twice by one thread.  The flag uses the initial-exec TLS model so
 * that reading it never allocates.
 *
 * dlsym may itself call calloc (for its error buffer) before the real
 * functions are known.  While they are being looked up, allocations are
 * served from a small static arena; its blocks are never handed to the real
 * free, and realloc of one copies it out.
 *
 * fork and exec
 * -------------
 *
 * A child created by fork does not record: the child handler of
 * pthread_atfork drops the buffer (the parent still owns those records),
 * resets the lock and closes the child's copy of the descriptor.  A program
 * started with exec loads the library afresh; it finds PATH already there
 * and records to PATH.PID or not at all (PYALLOC_TRACE_CHILDREN).  The log
 * descriptor is close-on-exec.
 *
 * Exit
 * ----
 *
 * Records are buffered (BUFFER_RECORDS of them) and written with write(2).
 * A destructor flushes the buffer at exit and switches to writing each later
 * record at once, since destructors of other libraries and atexit handlers
 * may still free memory after it.  A process that ends by a signal or by
 * _exit loses at most the records still buffered.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    RECORD_MALLOC = 1,
    RECORD_CALLOC = 2,
    RECORD_REALLOC = 3,
    RECORD_FREE = 4,
    RECORD_ALIGNED = 5,
};

struct log_header {
    char magic[8];
    uint32_t version;
    uint32_t pid;
};

struct record {
    uint32_t kind;
    uint32_t aux;
    uint64_t ptr;
    uint64_t size;
    uint64_t result;
};

_Static_assert(sizeof(struct log_header) == 16, "log header is 16 bytes");
_Static_assert(sizeof(struct record) == 32, "a record is 32 bytes");

#define BUFFER_RECORDS 4096
#define BOOTSTRAP_ARENA_BYTES (64 * 1024)
#define BOOTSTRAP_ALIGN 16

/* ---- the real functions ------------------------------------------------ */

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

/* 0: not resolved, 1: dlsym running (serve from the arena), 2: ready */
static int resolve_state;

/* ---- the bootstrap arena ----------------------------------------------- */

/* Each arena block is preceded by BOOTSTRAP_ALIGN bytes holding its size. */
static _Alignas(BOOTSTRAP_ALIGN) unsigned char bootstrap_arena[BOOTSTRAP_ARENA_BYTES];
static size_t bootstrap_used;

static int in_bootstrap_arena(const void *p)
{
    const unsigned char *c = p;
    return c >= bootstrap_arena && c < bootstrap_arena + sizeof bootstrap_arena;
}

static void *bootstrap_alloc(size_t size)
{
    size_t rounded = (size + BOOTSTRAP_ALIGN - 1) & ~(size_t)(BOOTSTRAP_ALIGN - 1);
    size_t start = __atomic_fetch_add(&bootstrap_used, BOOTSTRAP_ALIGN + rounded,
                                      __ATOMIC_RELAXED);
    if (rounded < size || start + BOOTSTRAP_ALIGN + rounded > sizeof bootstrap_arena)
        return NULL;
    *(size_t *)(bootstrap_arena + start) = size;
    return bootstrap_arena + start + BOOTSTRAP_ALIGN;
}

static size_t bootstrap_size(const void *p)
{
    return *(const size_t *)((const unsigned char *)p - BOOTSTRAP_ALIGN);
}

/* ---- recording state ------------------------------------------------------ */

static int log_fd = -1;
static int recording;          /* records are wanted: log open, limit not reached */
static int write_through;      /* set by the destructor: no more buffering */
static uint64_t records_left = UINT64_MAX;
static struct record buffer[BUFFER_RECORDS];
static size_t buffered;
static int lock_word;

static __thread int in_hook __attribute__((tls_model("initial-exec")));

static void lock(void)
{
    while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&lock_word, __ATOMIC_RELAXED))
            sched_yield();
    }
}

static void unlock(void)
{
    __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE);
}

static void write_all(const void *data, size_t length)
{
    const unsigned char *p = data;
    while (length > 0) {
        ssize_t n = write(log_fd, p, length);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* the log is unusable: stop rather than spin */
            __atomic_store_n(&recording, 0, __ATOMIC_RELAXED);
            return;
        }
        p += n;
        length -= (size_t)n;
    }
}

static void flush_locked(void)
{
    if (buffered > 0 && log_fd >= 0)
        write_all(buffer, buffered * sizeof buffer[0]);
    buffered = 0;
}

/* Caller holds the lock. */
static void append_locked(uint32_t kind, uint32_t aux, const void *ptr, uint64_t size,
                          const void *result)
{
    if (!__atomic_load_n(&recording, __ATOMIC_RELAXED))
        return;
    if (records_left == 0) {
        flush_locked();
        __atomic_store_n(&recording, 0, __ATOMIC_RELAXED);
        return;
    }
    records_left--;
    struct record *r = &buffer[buffered++];
    r->kind = kind;
    r->aux = aux;
    r->ptr = (uint64_t)(uintptr_t)ptr;
    r->size = size;
    r->result = (uint64_t)(uintptr_t)result;
    if (buffered == BUFFER_RECORDS || write_through)
        flush_locked();
}

static void append(uint32_t kind, uint32_t aux, const void *ptr, uint64_t size,
                   const void *result)
{
    int saved_errno = errno;
    lock();
    append_locked(kind, aux, ptr, size, result);
    unlock();
    errno = saved_errno;
}

static int wants_record(void)
{
    return !in_hook && __atomic_load_n(&recording, __ATOMIC_RELAXED);
}

/* ---- setup ---------------------------------------------------------------- */

static void resolve(void)
{
    int expected = 0;
    if (!__atomic_compare_exchange_n(&resolve_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        /* Another thread is resolving (or has): wait for it. */
        while (__atomic_load_n(&resolve_state, __ATOMIC_ACQUIRE) != 2)
            sched_yield();
        return;
    }
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    real_valloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "pvalloc");
    __atomic_store_n(&resolve_state, 2, __ATOMIC_RELEASE);
}

/* 1 while dlsym is running in this or another thread: use the arena. */
static int bootstrapping(void)
{
    int state = __atomic_load_n(&resolve_state, __ATOMIC_ACQUIRE);
    if (state == 2)
        return 0;
    if (state == 0) {
        resolve();
        return __atomic_load_n(&resolve_state, __ATOMIC_ACQUIRE) != 2;
    }
    return 1;
}

static void format_decimal(char *out, unsigned long value)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *out++ = digits[--n];
    *out = '\0';
}

static void atfork_prepare(void)
{
    lock();
}

static void atfork_parent(void)
{
    unlock();
}

static void atfork_child(void)
{
    buffered = 0;
    __atomic_store_n(&recording, 0, __ATOMIC_RELAXED);
    if (log_fd >= 0)
        close(log_fd);
    log_fd = -1;
    __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE);
}

static void open_log(void)
{
    const char *path = getenv("PYALLOC_TRACE_FILE");
    if (path == NULL || path[0] == '\0')
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) {
        const char *children = getenv("PYALLOC_TRACE_CHILDREN");
        if (children == NULL || strcmp(children, "1") != 0)
            return;
        char child_path[4096];
        size_t length = strlen(path);
        if (length + 24 > sizeof child_path)
            return;
        memcpy(child_path, path, length);
        child_path[length] = '.';
        format_decimal(child_path + length + 1, (unsigned long)getpid());
        fd = open(child_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    if (fd < 0)
        return;
    const char *limit = getenv("PYALLOC_TRACE_LIMIT");
    if (limit != NULL && limit[0] != '\0')
        records_left = strtoull(limit, NULL, 10);
    struct log_header header;
    memcpy(header.magic, "PYALREC1", 8);
    header.version = 1;
    header.pid = (uint32_t)getpid();
    log_fd = fd;
    __atomic_store_n(&recording, 1, __ATOMIC_RELAXED);
    write_all(&header, sizeof header);
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

__attribute__((constructor)) static void recorder_start(void)
{
    in_hook = 1;
    if (__atomic_load_n(&resolve_state, __ATOMIC_ACQUIRE) == 0)
        resolve();
    open_log();
    in_hook = 0;
}

__attribute__((destructor)) static void recorder_stop(void)
{
    lock();
    flush_locked();
    write_through = 1;
    unlock();
}

/* ---- the hooks ------------------------------------------------------------ */

void *malloc(size_t size)
{
    if (bootstrapping())
        return bootstrap_alloc(size);
    if (!wants_record())
        return real_malloc(size);
    in_hook = 1;
    void *result = real_malloc(size);
    append(RECORD_MALLOC, 0, NULL, size, result);
    in_hook = 0;
    return result;
}

void *calloc(size_t count, size_t size)
{
    size_t total;
    int overflow = __builtin_mul_overflow(count, size, &total);
    if (bootstrapping())
        return overflow ? NULL : bootstrap_alloc(total); /* static storage is zeroed */
    if (!wants_record())
        return real_calloc(count, size);
    in_hook = 1;
    uint64_t recorded = overflow ? UINT64_MAX : total;
    void *result = real_calloc(count, size);
    append(RECORD_CALLOC, 0, NULL, recorded, result);
    in_hook = 0;
    return result;
}

void free(void *ptr)
{
    if (ptr == NULL || in_bootstrap_arena(ptr))
        return;
    if (bootstrapping())
        return; /* cannot happen: nothing outside the arena exists yet */
    if (wants_record()) {
        in_hook = 1;
        append(RECORD_FREE, 0, ptr, 0, NULL);
        in_hook = 0;
    }
    real_free(ptr);
}

void *realloc(void *ptr, size_t size)
{
    if (ptr != NULL && in_bootstrap_arena(ptr)) {
        void *moved = malloc(size);
        if (moved != NULL) {
            size_t old = bootstrap_size(ptr);
            memcpy(moved, ptr, old < size ? old : size);
        }
        return moved;
    }
    if (bootstrapping()) {
        if (ptr != NULL)
            return NULL;
        return bootstrap_alloc(size);
    }
    if (!wants_record())
        return real_realloc(ptr, size);
    in_hook = 1;
    int saved_errno = errno;
    lock();
    errno = saved_errno;
    void *result = real_realloc(ptr, size);
    saved_errno = errno;
    append_locked(RECORD_REALLOC, 0, ptr, size, result);
    unlock();
    errno = saved_errno;
    in_hook = 0;
    return result;
}

void *reallocarray(void *ptr, size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(ptr, total);
}

static uint32_t clamp_alignment(size_t alignment)
{
    return alignment > UINT32_MAX ? UINT32_MAX : (uint32_t)alignment;
}

static void *record_aligned(void *result, size_t alignment, size_t size)
{
    append(RECORD_ALIGNED, clamp_alignment(alignment), NULL, size, result);
    in_hook = 0;
    return result;
}

int posix_memalign(void **out, size_t alignment, size_t size)
{
    if (bootstrapping() || real_posix_memalign == NULL)
        return ENOMEM;
    if (!wants_record())
        return real_posix_memalign(out, alignment, size);
    in_hook = 1;
    int status = real_posix_memalign(out, alignment, size);
    record_aligned(status == 0 ? *out : NULL, alignment, size);
    return status;
}

void *aligned_alloc(size_t alignment, size_t size)
{
    if (bootstrapping() || real_aligned_alloc == NULL)
        return NULL;
    if (!wants_record())
        return real_aligned_alloc(alignment, size);
    in_hook = 1;
    return record_aligned(real_aligned_alloc(alignment, size), alignment, size);
}

void *memalign(size_t alignment, size_t size)
{
    if (bootstrapping() || real_memalign == NULL)
        return NULL;
    if (!wants_record())
        return real_memalign(alignment, size);
    in_hook = 1;
    return record_aligned(real_memalign(alignment, size), alignment, size);
}

void *valloc(size_t size)
{
    if (bootstrapping() || real_valloc == NULL)
        return NULL;
    if (!wants_record())
        return real_valloc(size);
    in_hook = 1;
    return record_aligned(real_valloc(size), (size_t)sysconf(_SC_PAGESIZE), size);
}

void *pvalloc(size_t size)
{
    if (bootstrapping() || real_pvalloc == NULL)
        return NULL;
    if (!wants_record())
        return real_pvalloc(size);
    in_hook = 1;
    return record_aligned(real_pvalloc(size), (size_t)sysconf(_SC_PAGESIZE), size);
}
