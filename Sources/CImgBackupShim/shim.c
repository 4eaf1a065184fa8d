#define _GNU_SOURCE
#include "imgbackup_shim.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/dm-ioctl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/inet_diag.h>
#include <linux/rtnetlink.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

/* From fs/ext4/ext4.h, which is not a uapi header (the same number as XFS_IOC_GOINGDOWN). */
#ifndef EXT4_IOC_SHUTDOWN
#define EXT4_IOC_SHUTDOWN _IOR('X', 125, uint32_t)
#endif
#define IMGB_EXT4_GOING_FLAGS_NOLOGFLUSH 0x2

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

int imgb_loop_ctl_get_free(int control_fd) {
    int n = ioctl(control_fd, LOOP_CTL_GET_FREE);
    return n < 0 ? -errno : n;
}

int imgb_loop_configure(int loop_fd, int backing_fd, int read_only, int direct_io,
                        int autoclear, const char *file_name) {
    struct loop_config config;
    memset(&config, 0, sizeof(config));
    config.fd = (uint32_t)backing_fd;
    if (read_only) config.info.lo_flags |= LO_FLAGS_READ_ONLY;
    if (direct_io) config.info.lo_flags |= LO_FLAGS_DIRECT_IO;
    if (autoclear) config.info.lo_flags |= LO_FLAGS_AUTOCLEAR;
    if (file_name != NULL) {
        strncpy((char *)config.info.lo_file_name, file_name, LO_NAME_SIZE - 1);
    }
    return ioctl(loop_fd, LOOP_CONFIGURE, &config) < 0 ? -errno : 0;
}

int imgb_loop_clear(int loop_fd) {
    return ioctl(loop_fd, LOOP_CLR_FD, 0) < 0 ? -errno : 0;
}

int imgb_loop_set_capacity(int loop_fd) {
    return ioctl(loop_fd, LOOP_SET_CAPACITY, 0) < 0 ? -errno : 0;
}

int imgb_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void imgb_wipe(void *buffer, size_t length) {
    explicit_bzero(buffer, length);
}

int imgb_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int imgb_set_io_flusher(void) {
    return prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0 ? -errno : 0;
}

int imgb_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int imgb_syncfs(int fd) {
    return syncfs(fd);
}

int imgb_ext4_shut_down_without_log_flush(int fd) {
    uint32_t flags = IMGB_EXT4_GOING_FLAGS_NOLOGFLUSH;
    return ioctl(fd, EXT4_IOC_SHUTDOWN, &flags) < 0 ? -errno : 0;
}

/* One device-mapper ioctl on the device called `name`, with no payload. */
static int imgb_dm_call(const char *name, unsigned long request) {
    if (strlen(name) >= DM_NAME_LEN) return -ENAMETOOLONG;
    int control = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (control < 0) return -errno;
    struct dm_ioctl io;
    memset(&io, 0, sizeof(io));
    io.version[0] = DM_VERSION_MAJOR;
    io.data_size = sizeof(io);
    io.data_start = sizeof(io);
    strncpy(io.name, name, DM_NAME_LEN - 1);
    int status = ioctl(control, request, &io) < 0 ? -errno : 0;
    close(control);
    return status;
}

int imgb_dm_remove(const char *name) {
    return imgb_dm_call(name, DM_DEV_REMOVE);
}

int imgb_dm_exists(const char *name) {
    int status = imgb_dm_call(name, DM_DEV_STATUS);
    if (status == -ENXIO) return 0;
    return status == 0 ? 1 : status;
}

int imgb_set_not_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : -errno;
}

int imgb_protect_secret_pages(void *buffer, size_t length) {
    int result = 0;
    if (madvise(buffer, length, MADV_DONTDUMP) != 0) result = -errno;
    if (mlock(buffer, length) != 0 && result == 0) result = -errno;
    return result;
}

static volatile int imgb_stop_signal_fd = -1;

static void imgb_on_stop_signal(int signal) {
    int saved = errno;
    unsigned char number = (unsigned char)signal;
    ssize_t written = write(imgb_stop_signal_fd, &number, 1);
    (void)written; /* a full pipe already holds a signal to act on */
    errno = saved;
}

int imgb_catch_stop_signals(void) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) return -errno;
    imgb_stop_signal_fd = ends[1];
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = imgb_on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    const int signals[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++) {
        if (sigaction(signals[i], &action, NULL) != 0) return -errno;
    }
    return ends[0];
}

int imgb_borrow_fd(int pid, int target_fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return -errno;
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
    int saved = errno;
    close(pidfd);
    return fd < 0 ? -saved : fd;
}

int imgb_tcp_traffic(int fd, uint64_t *sent, uint64_t *received) {
    struct tcp_info info;
    memset(&info, 0, sizeof info);
    socklen_t length = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) < 0) return -errno;
    /* An older kernel fills less: both counters must be in what it gave. */
    if (length < offsetof(struct tcp_info, tcpi_bytes_sent) + sizeof info.tcpi_bytes_sent) return -EOPNOTSUPP;
    *sent = info.tcpi_bytes_sent;
    *received = info.tcpi_bytes_received;
    return 0;
}

int imgb_set_max_pacing_rate(int fd, uint64_t bytes_per_second) {
    return setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &bytes_per_second, sizeof bytes_per_second) < 0 ? -errno : 0;
}

int64_t imgb_unix_peer(uint32_t inode) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -errno;
    struct {
        struct nlmsghdr header;
        struct unix_diag_req request;
    } message;
    memset(&message, 0, sizeof message);
    message.header.nlmsg_len = sizeof message;
    message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    message.header.nlmsg_flags = NLM_F_REQUEST;
    message.request.sdiag_family = AF_UNIX;
    message.request.udiag_states = -1;
    message.request.udiag_ino = inode;
    message.request.udiag_show = UDIAG_SHOW_PEER;
    message.request.udiag_cookie[0] = INET_DIAG_NOCOOKIE;
    message.request.udiag_cookie[1] = INET_DIAG_NOCOOKIE;
    if (send(fd, &message, sizeof message, 0) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    union {
        char bytes[4096];
        struct nlmsghdr align;
    } reply;
    ssize_t length = recv(fd, reply.bytes, sizeof reply.bytes, 0);
    int saved = errno;
    close(fd);
    if (length < 0) return -saved;
    for (struct nlmsghdr *header = &reply.align; NLMSG_OK(header, (size_t)length);
         header = NLMSG_NEXT(header, length)) {
        if (header->nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr *error = NLMSG_DATA(header);
            return error->error < 0 ? error->error : -ENOENT;
        }
        if (header->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
        struct unix_diag_msg *diag = NLMSG_DATA(header);
        size_t left = header->nlmsg_len - NLMSG_LENGTH(sizeof *diag);
        for (struct rtattr *attribute = (struct rtattr *)(diag + 1); RTA_OK(attribute, left);
             attribute = RTA_NEXT(attribute, left)) {
            if (attribute->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(attribute) >= sizeof(uint32_t)) {
                uint32_t peer;
                memcpy(&peer, RTA_DATA(attribute), sizeof peer);
                return peer;
            }
        }
    }
    return -ENOENT;
}
