/* doctor.c: `sovtrain doctor`, a preflight report for one node: RDMA devices (libibverbs), the NCCL variables
 * they suggest, locked-memory limit, /dev/shm, GPUs, MPI and NCCL versions, and the checkpoint directory (free
 * space, a write + fsync test). Exit 0 unless something required (--require-rdma, --require-gpu) is missing or
 * the checkpoint directory cannot be written. */
#include "sov_internal.h"
#include <sovtrain/launch.h>
#include <sovtrain/runtime.h>

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <infiniband/verbs.h>
#include <mpi.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

typedef struct doctor {
    int active_ports;     /* RDMA ports in state ACTIVE */
    char hcas[512];       /* NCCL_IB_HCA suggestion */
    int roce_gid_index;   /* a RoCE v2 GID index with an IPv4-mapped address, -1 none */
    int problems;
} doctor;

/* The GID type sysfs reports ("IB/RoCE v1", "RoCE v2"), or "". */
static void gid_type(const char *dev, int port, int index, char *out, size_t cap) {
    char path[512];
    snprintf(path, sizeof path, "/sys/class/infiniband/%s/ports/%d/gid_attrs/types/%d", dev, port, index);
    sov_read_line(path, out, cap);
}

static void report_port(doctor *d, struct ibv_context *ctx, const char *dev, int port) {
    struct ibv_port_attr pa;
    if (ibv_query_port(ctx, (uint8_t)port, &pa) != 0) {
        printf("    port %d: cannot query: %s\n", port, strerror(errno));
        return;
    }
    const char *link = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet (RoCE)" : "InfiniBand";
    printf("    port %d: %s, %s, MTU %d, %d GIDs\n", port, ibv_port_state_str(pa.state), link,
           128 << pa.active_mtu, pa.gid_tbl_len);
    if (pa.state != IBV_PORT_ACTIVE)
        return;
    d->active_ports++;
    size_t used = strlen(d->hcas);
    snprintf(d->hcas + used, sizeof d->hcas - used, "%s%s:%d", used ? "," : "", dev, port);
    for (int i = 0; i < pa.gid_tbl_len && i < 16; i++) {
        union ibv_gid gid;
        if (ibv_query_gid(ctx, (uint8_t)port, i, &gid) != 0)
            continue;
        static const uint8_t zero[16];
        if (memcmp(gid.raw, zero, 16) == 0)
            continue;
        char type[32];
        gid_type(dev, port, i, type, sizeof type);
        int v4 = memcmp(gid.raw, zero, 10) == 0 && gid.raw[10] == 0xff && gid.raw[11] == 0xff;
        printf("      gid %d: %02x%02x:%02x%02x:...:%02x%02x:%02x%02x %s%s\n", i, gid.raw[0], gid.raw[1], gid.raw[2],
               gid.raw[3], gid.raw[12], gid.raw[13], gid.raw[14], gid.raw[15], type, v4 ? " (IPv4-mapped)" : "");
        if (pa.link_layer == IBV_LINK_LAYER_ETHERNET && d->roce_gid_index < 0 && v4 && strstr(type, "v2"))
            d->roce_gid_index = i;
    }
}

static void report_rdma(doctor *d) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    printf("RDMA (libibverbs):\n");
    if (!list || n == 0) {
        printf("  no RDMA devices: NCCL and MPI will use TCP sockets between hosts\n");
        if (list)
            ibv_free_device_list(list);
        return;
    }
    for (int i = 0; i < n; i++) {
        const char *name = ibv_get_device_name(list[i]);
        struct ibv_context *ctx = ibv_open_device(list[i]);
        struct ibv_device_attr attr;
        if (!ctx || ibv_query_device(ctx, &attr) != 0) {
            printf("  %s: cannot open: %s\n", name, strerror(errno));
            d->problems++;
            if (ctx)
                ibv_close_device(ctx);
            continue;
        }
        printf("  %s: %d port(s), firmware %s\n", name, attr.phys_port_cnt, attr.fw_ver);
        for (int p = 1; p <= attr.phys_port_cnt; p++)
            report_port(d, ctx, name, p);
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
}

/* The first interface that is up, not loopback, with an IPv4 address: a default for NCCL_SOCKET_IFNAME. */
static void socket_ifname(char *out, size_t cap) {
    struct ifaddrs *ifs, *i;
    out[0] = '\0';
    if (getifaddrs(&ifs) != 0)
        return;
    for (i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) && !(i->ifa_flags & IFF_LOOPBACK)) {
            snprintf(out, cap, "%s", i->ifa_name);
            break;
        }
    freeifaddrs(ifs);
}

static void report_limits(doctor *d) {
    struct rlimit rl;
    getrlimit(RLIMIT_MEMLOCK, &rl);
    if (rl.rlim_cur == RLIM_INFINITY)
        printf("locked memory: unlimited\n");
    else
        printf("locked memory: %llu KiB%s\n", (unsigned long long)rl.rlim_cur / 1024,
               d->active_ports ? " -- RDMA needs it unlimited (ulimit -l unlimited; in Kubernetes, IPC_LOCK)" : "");
    struct statvfs vs;
    if (statvfs("/dev/shm", &vs) == 0)
        printf("/dev/shm: %.1f GiB free of %.1f GiB%s\n", (double)vs.f_bavail * vs.f_frsize / 1073741824.0,
               (double)vs.f_blocks * vs.f_frsize / 1073741824.0,
               (double)vs.f_blocks * vs.f_frsize < 1073741824.0 ? " -- small: the shm backend needs ~2x the gradients "
                                                                    "(Kubernetes: an emptyDir with medium Memory)" : "");
    else
        printf("/dev/shm: missing -- the shm backend cannot run here (use --comm mpi)\n");
}

static void report_versions(void) {
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(mpi, &len);
    mpi[strcspn(mpi, ",\n")] = '\0';
    char why[256];
    int gpus = sov_gpu_count(why, sizeof why);
    printf("sovtrain %s; %s\n", sov_version(), mpi);
    if (gpus)
        printf("GPUs: %d (%s)\n", gpus, why);
    else
        printf("GPUs: none usable (%s)\n", why);
}

/* Free space and a 64 MiB write + fsync in the checkpoint directory. */
static int report_ckpt_dir(const char *dir) {
    if (sov_mkdir_p(dir) != SOV_OK) {
        printf("checkpoint directory %s: %s\n", dir, sov_last_error());
        return 1;
    }
    struct statvfs vs;
    statvfs(dir, &vs);
    char path[4200];
    snprintf(path, sizeof path, "%s/.sovtrain-doctor-%d", dir, (int)getpid());
    size_t bytes = (size_t)64 << 20;
    char *buf = malloc(bytes);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!buf || fd < 0) {
        printf("checkpoint directory %s: cannot write: %s\n", dir, strerror(errno));
        free(buf);
        return 1;
    }
    memset(buf, 0x5a, bytes);
    double t0 = sov_now();
    int ok = write(fd, buf, bytes) == (ssize_t)bytes && fsync(fd) == 0;
    double dt = sov_now() - t0;
    int e = errno;
    close(fd);
    unlink(path);
    free(buf);
    printf("checkpoint directory %s: %.1f GiB free; write + fsync of 64 MiB: %s", dir,
           (double)vs.f_bavail * vs.f_frsize / 1073741824.0, ok ? "" : strerror(e));
    if (ok)
        printf("%.2f GB/s", (double)bytes / dt / 1e9);
    printf("\n");
    return ok ? 0 : 1;
}

int sov_doctor_main(int argc, char **argv) {
    int need_rdma = 0, need_gpu = 0;
    const char *dir = "runs/checkpoints";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--require-rdma") == 0)
            need_rdma = 1;
        else if (strcmp(argv[i], "--require-gpu") == 0)
            need_gpu = 1;
        else if (strcmp(argv[i], "--ckpt-dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? stderr : stdout,
                    "usage: sovtrain doctor [--ckpt-dir DIR] [--require-rdma] [--require-gpu]\n"
                    "A preflight report for this node; exit 1 when something required is missing.\n");
            return strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    doctor d = {.roce_gid_index = -1};
    report_versions();
    report_rdma(&d);
    report_limits(&d);
    int bad = report_ckpt_dir(dir);
    char ifname[64];
    socket_ifname(ifname, sizeof ifname);
    printf("suggested NCCL settings:\n");
    if (d.active_ports)
        printf("  NCCL_IB_HCA=%s\n", d.hcas);
    if (d.roce_gid_index >= 0)
        printf("  NCCL_IB_GID_INDEX=%d   (RoCE v2, IPv4-mapped)\n", d.roce_gid_index);
    if (ifname[0])
        printf("  NCCL_SOCKET_IFNAME=%s\n", ifname);
    if (!d.active_ports)
        printf("  (no active RDMA port: NCCL falls back to sockets)\n");
    char why[256];
    if (need_rdma && !d.active_ports) {
        printf("FAIL: --require-rdma: no active RDMA port\n");
        bad = 1;
    }
    if (need_gpu && sov_gpu_count(why, sizeof why) == 0) {
        printf("FAIL: --require-gpu: %s\n", why);
        bad = 1;
    }
    return bad;
}
