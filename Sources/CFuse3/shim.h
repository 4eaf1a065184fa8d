#ifndef IMGBACKUP_CFUSE3_SHIM_H
#define IMGBACKUP_CFUSE3_SHIM_H
// fuse3 selects its API by FUSE_USE_VERSION, which must be defined before the
// header. With 312, fuse_new and fuse_loop_mt are real functions (with 31,
// fuse_loop_mt is a macro Swift cannot call).
#define FUSE_USE_VERSION 312
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#endif

#ifndef IMGBACKUP_CFUSE3_WRAPPERS
#define IMGBACKUP_CFUSE3_WRAPPERS
// fuse_new and fuse_loop_mt are macros that pick a versioned symbol; Swift
// cannot expand function-like macros, so these wrappers do it in C.
static inline struct fuse *imgb_fuse_new(struct fuse_args *args, const struct fuse_operations *ops,
                                         void *private_data) {
    return fuse_new(args, ops, sizeof(*ops), private_data);
}

/// The multi-threaded loop with up to max_threads workers: each worker can
/// have one NBD request in flight.
static inline int imgb_fuse_loop_mt(struct fuse *fuse, unsigned max_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_max_threads(config, max_threads);
    fuse_loop_cfg_set_idle_threads(config, max_threads);
    int status = fuse_loop_mt(fuse, config);
    fuse_loop_cfg_destroy(config);
    return status;
}

/// The bytes of a write handed to write_buf, without copying when they sit in
/// one memory buffer (the request buffer libfuse read from /dev/fuse). Else
/// copies them into `scratch` (at least fuse_buf_size(source) bytes), e.g.
/// from a pipe when libfuse spliced. Returns NULL if the copy fell short.
static inline const void *imgb_write_bytes(struct fuse_bufvec *source, void *scratch, size_t *size) {
    *size = fuse_buf_size(source);
    if (source->count == 1 && source->idx == 0 && !(source->buf[0].flags & FUSE_BUF_IS_FD)) {
        return (const char *)source->buf[0].mem + source->off;
    }
    struct fuse_bufvec destination = FUSE_BUFVEC_INIT(*size);
    destination.buf[0].mem = scratch;
    ssize_t copied = fuse_buf_copy(&destination, source, 0);
    return copied == (ssize_t)*size ? scratch : NULL;
}

/// Whether write_buf needs a scratch buffer for this write.
static inline int imgb_write_needs_copy(const struct fuse_bufvec *source) {
    return !(source->count == 1 && source->idx == 0 && !(source->buf[0].flags & FUSE_BUF_IS_FD));
}
#endif
