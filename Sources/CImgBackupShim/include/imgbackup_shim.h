#ifndef IMGBACKUP_SHIM_H
#define IMGBACKUP_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/xattr.h>  // getxattr, which Glibc's module does not export

// ioctl(2) is variadic, so Swift cannot call it; these wrappers give the loop
// device requests a typed signature. Each returns 0 or a value on success and
// -errno on failure.

/// LOOP_CTL_GET_FREE on /dev/loop-control: the number of a free loop device.
int imgb_loop_ctl_get_free(int control_fd);

/// LOOP_CONFIGURE (Linux 5.8+): bind backing_fd to the loop device in one
/// atomic call. direct_io asks for LO_FLAGS_DIRECT_IO (a loop device on a FUSE
/// file is many times slower buffered); autoclear detaches the device when its
/// last user closes it, so a crashed imgbackup does not leak loop devices.
int imgb_loop_configure(int loop_fd, int backing_fd, int read_only, int direct_io,
                        int autoclear, const char *file_name);

/// LOOP_CLR_FD: unbind the loop device (deferred by the kernel while in use).
int imgb_loop_clear(int loop_fd);

/// LOOP_SET_CAPACITY: re-read the backing file's size after it grew.
int imgb_loop_set_capacity(int loop_fd);

/// memfd_create(2) for capturing a child's output without a pipe: a daemon
/// that inherits a pipe (sshfs's ssh child) would keep it open forever.
int imgb_memfd_create(const char *name);

/// explicit_bzero: wipes a buffer in a way the compiler may not elide.
void imgb_wipe(void *buffer, size_t length);

/// eventfd(2), non-blocking and close-on-exec: wakes an event loop thread.
int imgb_eventfd(void);

/// pipe2(2) with O_CLOEXEC (glibc declares pipe2 only under _GNU_SOURCE).
int imgb_pipe_cloexec(int fds[2]);

/// syncfs(2): write out the dirty data of the filesystem holding fd.
int imgb_syncfs(int fd);

/// prctl(PR_SET_IO_FLUSHER) (Linux 5.6+): marks a process that serves a
/// block device's I/O, so memory reclaim does not wait on that same I/O
/// (writeback deadlock). prctl is variadic, hence the wrapper.
int imgb_set_io_flusher(void);

/// prctl(PR_SET_DUMPABLE, 0): no core dump of this process (it holds
/// key bytes), and other users' processes cannot ptrace it or read its
/// memory through /proc. Returns 0 or -errno.
int imgb_set_not_dumpable(void);

/// Keeps `length` bytes at `buffer` (page-aligned) out of swap (mlock) and
/// out of core dumps (MADV_DONTDUMP). Returns 0, or -errno of the first
/// call that failed (mlock fails beyond RLIMIT_MEMLOCK: the caller goes on).
int imgb_protect_secret_pages(void *buffer, size_t length);

/// EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH on a descriptor of the
/// mounted filesystem: the journal is aborted as at a power cut, writing
/// nothing more. Returns 0 or -errno.
int imgb_ext4_shut_down_without_log_flush(int fd);

/// DM_DEV_REMOVE of the device-mapper device `name`, through
/// /dev/mapper/control: also removes a device that has no live table (an
/// activation killed between creating the device and resuming it), which
/// libcryptsetup counts as not active and will not remove. Returns 0 or -errno.
int imgb_dm_remove(const char *name);
/// DM_DEV_STATUS of `name`: 1 when device-mapper knows a device of that name
/// (with a live table, only an inactive one, or none at all: such a device
/// has no /sys/block entry), 0 when it does not, or -errno.
int imgb_dm_exists(const char *name);

/// Catches SIGTERM, SIGINT and SIGHUP with a handler that writes the signal's
/// number (one byte) to a non-blocking pipe and returns: the self-pipe trick,
/// because a handler may only call async-signal-safe functions, and Swift
/// code cannot be one. A handler (not SIG_IGN) resets to the default across
/// exec, so the tools imgbackup starts still stop on SIGTERM. Returns the
/// pipe's read end (non-blocking, close-on-exec) or -errno.
int imgb_catch_stop_signals(void);

/// Duplicates descriptor `target_fd` of process `pid` into this one
/// (pidfd_getfd, Linux 5.6: ptrace access to `pid`, which root has). The
/// copy is close-on-exec and shares the open file: a socket option set on
/// it is set on the other process's socket. Returns the fd or -errno.
int imgb_borrow_fd(int pid, int target_fd);

/// What the TCP socket `fd` has carried: payload bytes sent (retransmissions
/// included: what went on the wire) and received. 0, or -errno (-ENOTSOCK,
/// -EOPNOTSUPP for a socket that is not TCP).
int imgb_tcp_traffic(int fd, uint64_t *sent, uint64_t *received);

/// SO_MAX_PACING_RATE on socket `fd`: at most `bytes_per_second` are sent
/// through it (TCP paces itself, without the fq qdisc, since Linux 4.13).
/// Returns 0 or -errno.
int imgb_set_max_pacing_rate(int fd, uint64_t bytes_per_second);

/// The inode of the socket at the other end of the unix socket `inode`
/// (sock_diag, UDIAG_SHOW_PEER): how sshfs's ssh is found, which sshfs
/// started before it daemonized (so it is not sshfs's child). Returns the
/// peer's inode, or -errno (-ENOENT: no such socket, or no peer).
int64_t imgb_unix_peer(uint32_t inode);

#endif
