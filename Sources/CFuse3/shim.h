#ifndef IMGBACKUP_CFUSE3_SHIM_H
#define IMGBACKUP_CFUSE3_SHIM_H
// fuse3 selects its API by FUSE_USE_VERSION, which must be defined before the
// header. With 312, fuse_new and fuse_loop_mt are real functions (with 31,
// fuse_loop_mt is a macro Swift cannot call).
#define FUSE_USE_VERSION 312
#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#endif
