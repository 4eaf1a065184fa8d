#ifndef IMGBACKUP_CNBD_SHIM_H
#define IMGBACKUP_CNBD_SHIM_H
// libnbd: the NBD client used by the NBD transport bridge.
#include <libnbd.h>
#endif
