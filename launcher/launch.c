/* launch.c: builds the mpirun command line, runs it, and relays its output tagged "[rank N] ".
 *
 * mpirun runs with --tag-output, which prefixes each line of rank N with "[jobid,N]<stdout>:" (or <stderr>);
 * we rewrite that prefix to "[rank N] " and tell the ranks (SOVTRAIN_TAGGED_OUTPUT=1) not to tag again. */
#include "job.h"
#include "launch_internal.h"
#include <sovtrain/launch.h>

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#define MAX_ARGS 512

typedef struct launch_opts {
    int np;
    const char *hosts;
    const char *hostfile;
    const char *mpirun;
    int dry_run;
    int tag;
    const char *exports[64];
    int n_exports;
    const char *mca[64][2];
    int n_mca;
    int max_restarts;
    double grace_s;
    int oversubscribe;
    const char *log_dir;
    int in_slurm; /* placement comes from the Slurm allocation */
    int nproc_per_node; /* 0: as mpirun places them */
    int preflight; /* run sovtrain doctor on every host first */
    char **cmd; /* the command each rank runs, NULL-terminated */
} launch_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: sovtrain launch [options] -- CMD [ARGS...]\n"
            "Starts CMD as N ranks through Open MPI's mpirun, with output tagged \"[rank N] \".\n"
            "\n"
            "  -np N              number of ranks (default: the hostfile's slots, SLURM_NTASKS, or 1)\n"
            "  --nproc-per-node G G ranks on every host (torchrun's flag): -np defaults to G x hosts, and mpirun\n"
            "                     maps them --map-by ppr:G:node\n"
            "  -H HOST[:SLOTS],.. hosts to run on (Open MPI -H syntax; default: this host)\n"
            "  --hostfile FILE    Open MPI hostfile (\"host slots=N\" lines); without -H or --hostfile, a Kubeflow\n"
            "                     MPI Operator's OMPI_MCA_orte_default_hostfile or a Slurm allocation is used\n"
            "  -x NAME[=VALUE]    export an environment variable to the ranks (repeatable)\n"
            "  --mca KEY VALUE    pass an MCA parameter to mpirun (repeatable)\n"
            "  --mpirun PATH      mpirun to use (default: $SOVTRAIN_MPIRUN or mpirun on PATH)\n"
            "  --max-restarts R   when a rank dies or the job fails, stop it and start it again up to R times,\n"
            "                     resuming from the latest checkpoint (default 3; backoff 1, 2, 4... s); a job\n"
            "                     that exits 2 (usage error) or 127 (no such command) is not restarted\n"
            "  --grace S          on SIGTERM/SIGINT/SIGUSR1 the ranks get SIGUSR1 (sovtrain train checkpoints and\n"
            "                     exits); after S seconds what is left is terminated (default 60)\n"
            "  --log-dir DIR      also write each rank's output to DIR/rank-N.log (and mpirun's to DIR/launcher.log)\n"
            "  --oversubscribe    allow more ranks than slots\n"
            "  --preflight        run `sovtrain doctor` on every host first; stop if it fails anywhere\n"
            "  --no-tag           relay output without rank tags\n"
            "  --dry-run          print the mpirun command and exit\n"
            "  -h, --help         this text\n"
            "\n"
            "CMD \"sovtrain\" means this sovtrain binary. Every rank gets torchrun's variables (RANK, WORLD_SIZE,\n"
            "LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT) and SOVTRAIN_RESTART_COUNT, and one GPU\n"
            "(CUDA_VISIBLE_DEVICES) per local rank where there are GPUs. The exit status is the job's: 0 when every\n"
            "rank exited 0 in the last attempt.\n"
            "example: sovtrain launch -np 2 -- sovtrain train --epochs 5 --run-dir runs/demo\n");
}

static sov_status parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    long v;
    SOV_CHECK(sov_parse_long(flag, s, lo, hi, &v));
    *out = (int)v;
    return SOV_OK;
}

/* Parses "slots=N" / "max_slots=N" style values of a hostfile line. */
static sov_status hostfile_field(const char *path, int line, const char *field, int *slots) {
    const char *eq = strchr(field, '=');
    if (!eq)
        return sov_fail(SOV_ERR_FORMAT, "%s:%d: \"%s\": expected KEY=VALUE after the host name", path, line, field);
    size_t klen = (size_t)(eq - field);
    int v;
    if (parse_int("value", eq + 1, 1, 1 << 20, &v) != SOV_OK)
        return sov_fail(SOV_ERR_FORMAT, "%s:%d: \"%s\": value must be a positive integer", path, line, field);
    if (klen == 5 && strncmp(field, "slots", 5) == 0)
        *slots = v;
    else if (!(klen == 9 && strncmp(field, "max_slots", 9) == 0) &&
             !(klen == 9 && strncmp(field, "max-slots", 9) == 0))
        return sov_fail(SOV_ERR_FORMAT, "%s:%d: unknown hostfile key \"%.*s\" (expected slots or max_slots)", path,
                        line, (int)klen, field);
    return SOV_OK;
}

sov_status sov_hostfile_check(const char *path, int *total_slots) {
    FILE *f = fopen(path, "r");
    if (!f)
        return sov_fail(SOV_ERR_IO, "hostfile %s: %s", path, strerror(errno));
    char buf[1024];
    int line = 0, hosts = 0;
    sov_status st = SOV_OK;
    *total_slots = 0;
    while (st == SOV_OK && fgets(buf, sizeof buf, f)) {
        line++;
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = '\0';
        char *save, *tok = strtok_r(buf, " \t\r\n", &save);
        if (!tok)
            continue;
        for (const char *c = tok; *c && st == SOV_OK; c++)
            if (!isalnum((unsigned char)*c) && !strchr(".-_:", *c))
                st = sov_fail(SOV_ERR_FORMAT, "%s:%d: \"%s\" is not a host name", path, line, tok);
        int slots = 1;
        while (st == SOV_OK && (tok = strtok_r(NULL, " \t\r\n", &save)))
            st = hostfile_field(path, line, tok, &slots);
        *total_slots += slots;
        hosts++;
    }
    fclose(f);
    if (st == SOV_OK && hosts == 0)
        st = sov_fail(SOV_ERR_FORMAT, "hostfile %s names no hosts", path);
    return st;
}

/* Every host must resolve, before anything starts. */
static sov_status check_host(const char *host, const char *from) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (res)
        freeaddrinfo(res);
    return rc == 0 ? SOV_OK : sov_fail(SOV_ERR_INVALID, "unknown host \"%s\" (%s): %s", host, from, gai_strerror(rc));
}

/* -H host[:slots],...: every host resolves; the slots (1 where none is given) are summed. */
static sov_status check_host_list(const char *list, int *slots) {
    char copy[4096], *save, *tok;
    snprintf(copy, sizeof copy, "%s", list);
    *slots = 0;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        int n = 1;
        if (colon) {
            *colon = '\0';
            SOV_CHECK(parse_int("-H slots", colon + 1, 1, 1 << 20, &n));
        }
        SOV_CHECK(check_host(tok, "-H"));
        *slots += n;
    }
    return *slots ? SOV_OK : sov_fail(SOV_ERR_INVALID, "-H \"%s\" names no hosts", list);
}

/* The next host name of an (already checked) hostfile: its lines' first words, '#' comments left out. */
static int next_hostfile_host(FILE *f, char *name, size_t cap) {
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "#")] = '\0';
        char *save, *tok = strtok_r(line, " \t\r\n", &save);
        if (tok) {
            snprintf(name, cap, "%s", tok);
            return 1;
        }
    }
    return 0;
}

/* Hosts resolve and hold at least -np slots (unless --oversubscribe), before anything starts. */
static sov_status check_placement(const launch_opts *o) {
    int slots = 0;
    const char *where = o->hosts ? "-H" : "the hostfile";
    if (o->hosts)
        SOV_CHECK(check_host_list(o->hosts, &slots));
    else if (o->hostfile) {
        SOV_CHECK(sov_hostfile_check(o->hostfile, &slots));
        FILE *f = fopen(o->hostfile, "r");
        char host[256], from[4200];
        snprintf(from, sizeof from, "hostfile %s", o->hostfile);
        sov_status st = SOV_OK;
        while (st == SOV_OK && next_hostfile_host(f, host, sizeof host))
            st = check_host(host, from);
        if (f)
            fclose(f);
        SOV_CHECK(st);
    } else {
        return SOV_OK;
    }
    if (o->np > slots && !o->oversubscribe)
        return sov_fail(SOV_ERR_INVALID, "-np %d exceeds the %d slot%s of %s (add slots, lower -np, or pass "
                        "--oversubscribe)", o->np, slots, slots == 1 ? "" : "s", where);
    return SOV_OK;
}

/* How many hosts the job spans: -H entries, hostfile lines, the Slurm allocation's nodes, or this one. */
static int count_hosts(const launch_opts *o) {
    int n = 0;
    if (o->hosts) {
        for (const char *p = o->hosts; *p; p++)
            n += *p == ',';
        return n + 1;
    }
    if (o->hostfile) {
        FILE *f = fopen(o->hostfile, "r");
        char host[256];
        while (next_hostfile_host(f, host, sizeof host))
            n++;
        if (f)
            fclose(f);
        return n ? n : 1;
    }
    const char *nodes = getenv("SLURM_JOB_NUM_NODES");
    if (o->in_slurm && nodes && atoi(nodes) > 0)
        return atoi(nodes);
    return 1;
}

/* --nproc-per-node G: -np is G x hosts unless given, and then it must fit. */
static sov_status apply_nproc_per_node(launch_opts *o, int np_given) {
    if (!o->nproc_per_node)
        return SOV_OK;
    int hosts = count_hosts(o), fits = o->nproc_per_node * hosts;
    if (!np_given)
        o->np = fits;
    else if (o->np > fits)
        return sov_fail(SOV_ERR_INVALID, "-np %d exceeds --nproc-per-node %d x %d host%s = %d ranks", o->np,
                        o->nproc_per_node, hosts, hosts == 1 ? "" : "s", fits);
    return SOV_OK;
}

/* Without -H or --hostfile the launcher adopts what its environment provides: a Kubeflow MPI Operator launcher
 * pod's hostfile (OMPI_MCA_orte_default_hostfile, e.g. /etc/mpi/hostfile; -np defaults to its slots), or a
 * Slurm allocation (-np defaults to SLURM_NTASKS; mpirun places the ranks on SLURM_JOB_NODELIST itself). */
static sov_status pick_up_environment(launch_opts *o) {
    int np_given = o->np > 0;
    const char *hostfile = getenv("OMPI_MCA_orte_default_hostfile");
    const char *ntasks = getenv("SLURM_NTASKS"), *nodelist = getenv("SLURM_JOB_NODELIST");
    if (!o->hosts && !o->hostfile && hostfile && *hostfile) {
        int slots;
        SOV_CHECK(sov_hostfile_check(hostfile, &slots));
        o->hostfile = hostfile;
        if (o->np == 0)
            o->np = slots;
        fprintf(stderr, "sovtrain launch: using the hostfile %s (OMPI_MCA_orte_default_hostfile): %d slots\n",
                hostfile, slots);
    } else if (!o->hosts && !o->hostfile && nodelist && ntasks) {
        int tasks;
        SOV_CHECK(parse_int("SLURM_NTASKS", ntasks, 1, 1 << 20, &tasks));
        o->in_slurm = 1;
        if (o->np > tasks && !o->oversubscribe) /* mpirun's slots are the allocation's tasks */
            return sov_fail(SOV_ERR_INVALID, "-np %d exceeds the %d task%s of the Slurm allocation of %s (SLURM_NTASKS; "
                            "lower -np, allocate more tasks, or pass --oversubscribe)", o->np, tasks, tasks == 1 ? "" : "s",
                            nodelist);
        if (o->np == 0) {
            o->np = tasks;
            fprintf(stderr, "sovtrain launch: inside the Slurm allocation of %s: %d ranks (SLURM_NTASKS)\n", nodelist,
                    o->np);
        }
    }
    SOV_CHECK(apply_nproc_per_node(o, np_given));
    if (o->np == 0)
        o->np = 1;
    return SOV_OK;
}

static sov_status parse_opts(int argc, char **argv, launch_opts *o, int *help) {
    *o = (launch_opts){.np = 0, .tag = 1, .mpirun = getenv("SOVTRAIN_MPIRUN"), .max_restarts = 3, .grace_s = 60};
    if (!o->mpirun || !*o->mpirun)
        o->mpirun = "mpirun";
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *help = 1;
            return SOV_OK;
        } else if (strcmp(a, "--dry-run") == 0) {
            o->dry_run = 1;
        } else if (strcmp(a, "--preflight") == 0) {
            o->preflight = 1;
        } else if (strcmp(a, "--oversubscribe") == 0) {
            o->oversubscribe = 1;
        } else if (strcmp(a, "--log-dir") == 0 && has_value) {
            o->log_dir = argv[++i];
        } else if (strcmp(a, "--no-tag") == 0) {
            o->tag = 0;
        } else if ((strcmp(a, "-np") == 0 || strcmp(a, "-n") == 0) && has_value) {
            SOV_CHECK(parse_int(a, argv[++i], 1, 1 << 20, &o->np));
        } else if ((strcmp(a, "--nproc-per-node") == 0 || strcmp(a, "--npernode") == 0) && has_value) {
            SOV_CHECK(parse_int(a, argv[++i], 1, 4096, &o->nproc_per_node));
        } else if ((strcmp(a, "-H") == 0 || strcmp(a, "--host") == 0) && has_value) {
            o->hosts = argv[++i];
        } else if (strcmp(a, "--hostfile") == 0 && has_value) {
            o->hostfile = argv[++i];
        } else if (strcmp(a, "--max-restarts") == 0 && has_value) {
            SOV_CHECK(parse_int(a, argv[++i], 0, 1000, &o->max_restarts));
        } else if (strcmp(a, "--grace") == 0 && has_value) {
            int g;
            SOV_CHECK(parse_int(a, argv[++i], 0, 86400, &g));
            o->grace_s = g;
        } else if (strcmp(a, "--mpirun") == 0 && has_value) {
            o->mpirun = argv[++i];
        } else if (strcmp(a, "-x") == 0 && has_value) {
            if (o->n_exports == 64)
                return sov_fail(SOV_ERR_INVALID, "too many -x options (at most 64)");
            o->exports[o->n_exports++] = argv[++i];
        } else if (strcmp(a, "--mca") == 0 && i + 2 < argc) {
            if (o->n_mca == 64)
                return sov_fail(SOV_ERR_INVALID, "too many --mca options (at most 64)");
            o->mca[o->n_mca][0] = argv[++i];
            o->mca[o->n_mca++][1] = argv[++i];
        } else if (a[0] == '-') {
            return sov_fail(SOV_ERR_INVALID, "unknown option or missing value: \"%s\"", a);
        } else {
            break; /* the command starts here (the "--" is optional) */
        }
    }
    if (i >= argc)
        return sov_fail(SOV_ERR_INVALID, "no command given: put the command each rank runs after \"--\"");
    if (o->hosts && o->hostfile)
        return sov_fail(SOV_ERR_INVALID, "give -H or --hostfile, not both");
    SOV_CHECK(pick_up_environment(o));
    SOV_CHECK(check_placement(o));
    o->cmd = argv + i;
    return SOV_OK;
}

/* The rank command: "sovtrain" names this very binary, so ranks run the same build as the launcher. */
static const char *resolve_cmd(const char *cmd, char *self, size_t cap) {
    if (strcmp(cmd, "sovtrain") != 0)
        return cmd;
    ssize_t n = readlink("/proc/self/exe", self, cap - 1);
    if (n <= 0)
        return cmd;
    self[n] = '\0';
    return self;
}

static const char *const forwarded_prefixes[] = {"SOVTRAIN_", "OPENBLAS_", "OMP_", "NCCL_", "UCX_", NULL};

static int mca_given(const launch_opts *o, const char *key) {
    for (int i = 0; i < o->n_mca; i++)
        if (strcmp(o->mca[i][0], key) == 0)
            return 1;
    return 0;
}

/* Builds the mpirun argv into out[] (at most MAX_ARGS - 1 entries, NULL-terminated). */
static sov_status build_argv(const launch_opts *o, const char **out, char *self, size_t self_cap,
                             char (*xbuf)[256], int xcap) {
    extern char **environ;
    static char np[16];
    int n = 0, nx = 0;
#define PUSH(s)                                                                           \
    do {                                                                                  \
        if (n >= MAX_ARGS - 1)                                                            \
            return sov_fail(SOV_ERR_INVALID, "mpirun command line exceeds %d arguments", MAX_ARGS); \
        out[n++] = (s);                                                                   \
    } while (0)
    snprintf(np, sizeof np, "%d", o->np);
    PUSH(o->mpirun);
    PUSH("-np");
    PUSH(np);
    if (geteuid() == 0)
        PUSH("--allow-run-as-root");
    if (o->hosts) {
        PUSH("-H");
        PUSH(o->hosts);
    } else if (o->hostfile) {
        PUSH("--hostfile");
        PUSH(o->hostfile);
    }
    if (o->nproc_per_node) {
        static char ppr[32];
        snprintf(ppr, sizeof ppr, "ppr:%d:node", o->nproc_per_node);
        PUSH("--map-by");
        PUSH(ppr);
    }
    if (o->oversubscribe || (!o->hosts && !o->hostfile && !o->in_slurm && o->np > sysconf(_SC_NPROCESSORS_ONLN)))
        PUSH("--oversubscribe"); /* asked for, or more local ranks than cores asked for explicitly */
    if (isatty(STDIN_FILENO)) { /* mpirun runs in its own process group: reading a terminal would stop it */
        PUSH("--stdin");
        PUSH("none");
    }
    if (o->tag) {
        PUSH("--tag-output");
        PUSH("-x");
        PUSH("SOVTRAIN_TAGGED_OUTPUT=1");
    }
    for (int i = 0; i < o->n_mca; i++) {
        PUSH("--mca");
        PUSH(o->mca[i][0]);
        PUSH(o->mca[i][1]);
    }
    /* MPI's own traffic (start-up, the mpi/hier backends' collectives, small control messages) goes over TCP and
     * shared memory, leaving the RDMA devices to NCCL, which carries the gradients on GPU jobs: no UCX/verbs
     * contention, and the same path on every machine. Each default yields to the user's own --mca KEY. */
    if (!mca_given(o, "pml")) {
        PUSH("--mca");
        PUSH("pml");
        PUSH("ob1");
    }
    if (!mca_given(o, "btl")) {
        PUSH("--mca");
        PUSH("btl");
        PUSH("self,vader,tcp");
    }
    for (char **e = environ; *e && nx < xcap; e++)
        for (const char *const *p = forwarded_prefixes; *p; p++)
            if (strncmp(*e, *p, strlen(*p)) == 0 && strncmp(*e, "SOVTRAIN_TAGGED_OUTPUT=", 23) != 0) {
                const char *eq = strchr(*e, '=');
                snprintf(xbuf[nx], 256, "%.*s", (int)(eq ? eq - *e : (long)strlen(*e)), *e);
                PUSH("-x");
                PUSH(xbuf[nx++]);
                break;
            }
    for (int i = 0; i < o->n_exports; i++) {
        PUSH("-x");
        PUSH(o->exports[i]);
    }
    PUSH("-x");
    PUSH("MASTER_ADDR");
    PUSH("-x");
    PUSH("MASTER_PORT");
    /* every rank starts through `sovtrain _rank`, which sets its torchrun-style variables, then runs CMD */
    static char wrapper[4096];
    PUSH(resolve_cmd("sovtrain", wrapper, sizeof wrapper));
    PUSH("_rank");
    PUSH(resolve_cmd(o->cmd[0], self, self_cap));
    for (char **c = o->cmd + 1; *c; c++)
        PUSH(*c);
    out[n] = NULL;
#undef PUSH
    return SOV_OK;
}

/* Prints argv as a shell-quotable line. */
static void print_command(FILE *f, const char *const *argv) {
    for (int i = 0; argv[i]; i++) {
        const char *a = argv[i];
        int plain = *a != '\0';
        for (const char *c = a; *c && plain; c++)
            plain = isalnum((unsigned char)*c) || strchr("-_./=:,+@%", *c);
        if (plain)
            fprintf(f, "%s%s", i ? " " : "", a);
        else {
            fprintf(f, "%s'", i ? " " : "");
            for (const char *c = a; *c; c++)
                *c == '\'' ? fputs("'\\''", f) : fputc(*c, f);
            fputc('\'', f);
        }
    }
    fputc('\n', f);
}

/* A job id for the ranks (SOVTRAIN_JOB_ID): their shared-memory segments carry it in their names, so the
 * launcher can remove what a crashed job left in /dev/shm. */
static const char *set_job_id(void) {
    const char *id = getenv("SOVTRAIN_JOB_ID");
    if (!id || !*id) {
        char buf[64];
        snprintf(buf, sizeof buf, "j%dx%lx", (int)getpid(), (unsigned long)time(NULL));
        setenv("SOVTRAIN_JOB_ID", buf, 1);
    }
    return getenv("SOVTRAIN_JOB_ID");
}

/* The job's secret (SOVTRAIN_JOB_TOKEN), which ranks started without mpirun prove to each other at the rendezvous
 * and on the tcp ring (docs/security.md): one given to the launcher is passed on; otherwise a random one per job.
 * The ranks get it by name through mpirun's -x, never on a command line. */
static sov_status set_job_token(void) {
    const char *file = getenv("SOVTRAIN_JOB_TOKEN_FILE"), *given = getenv("SOVTRAIN_JOB_TOKEN");
    if ((file && *file) || (given && *given))
        return SOV_OK;
    unsigned char bytes[32];
    char hex[65];
    if (getrandom(bytes, sizeof bytes, 0) != (ssize_t)sizeof bytes)
        return sov_fail(SOV_ERR_INTERNAL, "making the job's secret: getrandom: %s", strerror(errno));
    for (size_t i = 0; i < sizeof bytes; i++)
        snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
    setenv("SOVTRAIN_JOB_TOKEN", hex, 1);
    return SOV_OK;
}

static void remove_shm_leftovers(const char *job_id) {
    char pattern[256];
    snprintf(pattern, sizeof pattern, "/dev/shm/sovtrain-%s-*", job_id);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++)
        unlink(g.gl_pathv[i]);
    fprintf(stderr, "sovtrain launch: removed %zu shared-memory segment%s left by the job\n", g.gl_pathc,
            g.gl_pathc == 1 ? "" : "s");
    globfree(&g);
}

int sov_slurm_first_host(const char *nodelist, char *out, size_t cap) {
    size_t prefix = strcspn(nodelist, "[,");
    if (prefix == 0 || prefix >= cap)
        return 0;
    if (nodelist[prefix] != '[') { /* a plain name */
        snprintf(out, cap, "%.*s", (int)prefix, nodelist);
        return 1;
    }
    const char *first = nodelist + prefix + 1, *close = strchr(first, ']');
    size_t digits = strspn(first, "0123456789");
    if (!close || digits == 0 || prefix + digits >= cap)
        return 0;
    /* the first number of the range keeps its zero padding; a suffix after ']' belongs to every name */
    snprintf(out, cap, "%.*s%.*s%.*s", (int)prefix, nodelist, (int)digits, first, (int)strcspn(close + 1, ","),
             close + 1);
    return 1;
}

/* MASTER_ADDR: the first host (rank 0 runs there), MASTER_PORT: a port free on this host right now. */
static void set_master(const launch_opts *o) {
    char addr[256] = "127.0.0.1";
    const char *nodelist = getenv("SLURM_JOB_NODELIST");
    if (o->in_slurm && nodelist)
        sov_slurm_first_host(nodelist, addr, sizeof addr); /* a malformed list leaves 127.0.0.1 */
    if (o->hosts) {
        snprintf(addr, sizeof addr, "%.*s", (int)strcspn(o->hosts, ":,"), o->hosts);
    } else if (o->hostfile) {
        FILE *f = fopen(o->hostfile, "r");
        next_hostfile_host(f, addr, sizeof addr);
        if (f)
            fclose(f);
    }
    if (strcmp(addr, "localhost") == 0)
        snprintf(addr, sizeof addr, "127.0.0.1");
    int port = 29500;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof sin;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 && getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
        port = ntohs(sin.sin_port);
    if (fd >= 0)
        close(fd);
    char pbuf[16];
    snprintf(pbuf, sizeof pbuf, "%d", port);
    if (!getenv("MASTER_ADDR"))
        setenv("MASTER_ADDR", addr, 1);
    if (!getenv("MASTER_PORT"))
        setenv("MASTER_PORT", pbuf, 1);
}

/* The checkpoint the job last committed, as rank 0 of `sovtrain train` reported it. */
static void last_checkpoint(const char *status_dir, char *out, size_t cap) {
    char path[4200];
    snprintf(path, sizeof path, "%s/last_checkpoint", status_dir);
    sov_read_line(path, out, cap);
}

static void summary(int attempts, int restarts, int max_restarts, const char *failures, const char *status_dir,
                    int rc) {
    char ckpt[4096];
    last_checkpoint(status_dir, ckpt, sizeof ckpt);
    fprintf(stderr, "sovtrain launch: summary: exit %d after %d attempt%s, %d restart%s used of %d%s%s\n", rc,
            attempts, attempts == 1 ? "" : "s", restarts, restarts == 1 ? "" : "s", max_restarts,
            ckpt[0] ? "; last checkpoint " : "", ckpt);
    if (failures[0])
        fprintf(stderr, "%s", failures);
}

static void remove_status_dir(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/last_checkpoint", dir);
    unlink(path);
    rmdir(dir);
}

/* `sovtrain doctor` once on every host of the job (mpirun --map-by ppr:1:node), before the job itself. */
static int preflight(const launch_opts *o) {
    static char self[4096];
    const char *argv[32];
    int n = 0;
    argv[n++] = o->mpirun;
    if (geteuid() == 0)
        argv[n++] = "--allow-run-as-root";
    if (o->hosts) {
        argv[n++] = "-H";
        argv[n++] = o->hosts;
    } else if (o->hostfile) {
        argv[n++] = "--hostfile";
        argv[n++] = o->hostfile;
    }
    for (int i = 0; i < o->n_mca && n < 24; i++) {
        argv[n++] = "--mca";
        argv[n++] = o->mca[i][0];
        argv[n++] = o->mca[i][1];
    }
    argv[n++] = "--map-by";
    argv[n++] = "ppr:1:node";
    argv[n++] = resolve_cmd("sovtrain", self, sizeof self);
    argv[n++] = "doctor";
    argv[n] = NULL;
    fprintf(stderr, "sovtrain launch: preflight: sovtrain doctor on every host\n");
    job_result r;
    job_run(argv, o->grace_s, o->log_dir, &r);
    if (r.exit_code != 0) {
        char why[512];
        job_describe(&r, why, sizeof why);
        fprintf(stderr, "sovtrain launch: preflight failed (%s): not starting the job\n", why);
    }
    job_result_free(&r);
    return r.exit_code;
}

/* Runs the job, restarting it after a failure (with SOVTRAIN_RESUME=auto, so `sovtrain train` resumes from its
 * latest checkpoint) until it succeeds, is stopped by a signal, or the restarts run out. */
static int run_attempts(const launch_opts *o, const char *const *argv, const char *job_id, const char *status_dir) {
    char failures[8192] = "", why[1024], count[16];
    size_t used = 0;
    int restarts = 0, rc = 0;
    for (;;) {
        snprintf(count, sizeof count, "%d", restarts);
        setenv("SOVTRAIN_RESTART_COUNT", count, 1);
        job_result r;
        job_run(argv, o->grace_s, o->log_dir, &r);
        r.world = o->np;
        remove_shm_leftovers(job_id);
        rc = r.exit_code;
        int done = rc == 0 || r.stop_signal;
        if (!done)
            job_describe(&r, why, sizeof why);
        job_result_free(&r);
        if (done)
            break;
        used += (size_t)snprintf(failures + used, sizeof failures - used, "  attempt %d failed: %s\n", restarts + 1, why);
        if (used >= sizeof failures)
            used = sizeof failures - 1;
        if (restarts >= o->max_restarts)
            break;
        if (rc == 2 || rc == 127) { /* a usage error or a missing command: starting again cannot help */
            fprintf(stderr, "sovtrain launch: %s (exit %d: a usage error or a missing command): not restarting\n",
                    why, rc);
            break;
        }
        int backoff = restarts < 5 ? 1 << restarts : 30;
        restarts++;
        fprintf(stderr, "sovtrain launch: %s; restarting the job in %d s from its latest checkpoint (restart %d of %d)\n",
                why, backoff, restarts, o->max_restarts);
        setenv("SOVTRAIN_RESUME", "auto", 1);
        sleep((unsigned)backoff); /* a backoff, not synchronisation: give a flapping host time to settle */
    }
    if (restarts > 0 || rc != 0)
        summary(restarts + 1, restarts, o->max_restarts, failures, status_dir, rc);
    if (status_dir[0] && strcmp(status_dir, "/tmp/sovtrain-launch-XXXXXX") != 0)
        remove_status_dir(status_dir);
    return rc;
}

int sov_launch_main(int argc, char **argv) {
    launch_opts o;
    int help = 0;
    if (parse_opts(argc, argv, &o, &help) != SOV_OK) {
        fprintf(stderr, "sovtrain launch: %s\n(see `sovtrain launch --help`)\n", sov_last_error());
        return 2;
    }
    if (help) {
        usage(stdout);
        return 0;
    }
    if (o.log_dir && !o.dry_run && sov_mkdir_p(o.log_dir) != SOV_OK) {
        fprintf(stderr, "sovtrain launch: --log-dir: %s\n", sov_last_error());
        return 2;
    }
    const char *job_id = set_job_id();
    if (set_job_token() != SOV_OK) {
        fprintf(stderr, "sovtrain launch: %s\n", sov_last_error());
        return 1;
    }
    set_master(&o);
    char status_dir[] = "/tmp/sovtrain-launch-XXXXXX";
    if (!o.dry_run && mkdtemp(status_dir))
        setenv("SOVTRAIN_STATUS_DIR", status_dir, 1);
    setenv("SOVTRAIN_RESTART_COUNT", "0", 1);
    const char *job_argv[MAX_ARGS];
    static char self[4096], xbuf[128][256];
    if (build_argv(&o, job_argv, self, sizeof self, xbuf, 128) != SOV_OK) {
        fprintf(stderr, "sovtrain launch: %s\n", sov_last_error());
        return 2;
    }
    if (o.dry_run) {
        print_command(stdout, job_argv);
        return 0;
    }
    if (o.preflight && preflight(&o) != 0)
        return 1;
    return run_attempts(&o, job_argv, job_id, status_dir);
}
