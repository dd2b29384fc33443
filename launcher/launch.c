/* launch.c: builds the mpirun command line, runs it, and relays its output tagged "[rank N] ".
 *
 * mpirun runs with --tag-output, which prefixes each line of rank N with "[jobid,N]<stdout>:" (or <stderr>);
 * we rewrite that prefix to "[rank N] " and tell the ranks (SOVTRAIN_TAGGED_OUTPUT=1) not to tag again. */
#include "launch.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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
    char **cmd; /* the command each rank runs, NULL-terminated */
} launch_opts;

static void usage(FILE *out) {
    fprintf(out,
            "usage: sovtrain launch [options] -- CMD [ARGS...]\n"
            "Starts CMD as N ranks through Open MPI's mpirun, with output tagged \"[rank N] \".\n"
            "\n"
            "  -np N              number of ranks (default 1)\n"
            "  -H HOST[:SLOTS],.. hosts to run on (Open MPI -H syntax; default: this host)\n"
            "  --hostfile FILE    Open MPI hostfile (\"host slots=N\" lines)\n"
            "  -x NAME[=VALUE]    export an environment variable to the ranks (repeatable)\n"
            "  --mca KEY VALUE    pass an MCA parameter to mpirun (repeatable)\n"
            "  --mpirun PATH      mpirun to use (default: $SOVTRAIN_MPIRUN or mpirun on PATH)\n"
            "  --no-tag           relay output without rank tags\n"
            "  --dry-run          print the mpirun command and exit\n"
            "  -h, --help         this text\n"
            "\n"
            "CMD \"sovtrain\" means this sovtrain binary. The exit status is the job's: 0 when every rank exited 0.\n"
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

static sov_status parse_opts(int argc, char **argv, launch_opts *o, int *help) {
    *o = (launch_opts){.np = 1, .tag = 1, .mpirun = getenv("SOVTRAIN_MPIRUN")};
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
        } else if (strcmp(a, "--no-tag") == 0) {
            o->tag = 0;
        } else if ((strcmp(a, "-np") == 0 || strcmp(a, "-n") == 0) && has_value) {
            SOV_CHECK(parse_int(a, argv[++i], 1, 1 << 20, &o->np));
        } else if ((strcmp(a, "-H") == 0 || strcmp(a, "--host") == 0) && has_value) {
            o->hosts = argv[++i];
        } else if (strcmp(a, "--hostfile") == 0 && has_value) {
            o->hostfile = argv[++i];
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
    if (o->hostfile) {
        int slots;
        SOV_CHECK(sov_hostfile_check(o->hostfile, &slots));
    }
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
    } else if (o->np > sysconf(_SC_NPROCESSORS_ONLN)) {
        PUSH("--oversubscribe"); /* more local ranks than cores was asked for explicitly */
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

/* ---- running mpirun and relaying its output ---- */

static volatile sig_atomic_t child_pid;

static void forward_signal(int sig) {
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
}

typedef struct stream {
    int fd;
    FILE *out;
    char buf[65536];
    size_t len;
} stream;

/* Writes one line, rewriting Open MPI's "[job,rank]<stdout>:" tag to "[rank N] ". */
static void relay_line(FILE *out, const char *line, size_t len) {
    unsigned job, rank;
    char kind[8];
    int consumed = 0;
    if (len > 0 && line[0] == '[' &&
        sscanf(line, "[%u,%u]<%7[a-z]>:%n", &job, &rank, kind, &consumed) == 3 && consumed > 0) {
        fprintf(out, "[rank %u] %.*s", rank, (int)(len - (size_t)consumed), line + consumed);
    } else {
        fwrite(line, 1, len, out);
    }
    fflush(out);
}

/* Reads what is available; relays complete lines. Returns 0 at EOF. */
static int pump(stream *s) {
    ssize_t r = read(s->fd, s->buf + s->len, sizeof s->buf - 1 - s->len);
    if (r < 0 && errno == EINTR)
        return 1;
    if (r <= 0) {
        if (s->len)
            relay_line(s->out, s->buf, s->len);
        s->len = 0;
        return 0;
    }
    s->len += (size_t)r;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++)
        if (s->buf[i] == '\n') {
            relay_line(s->out, s->buf + start, i + 1 - start);
            start = i + 1;
        }
    if (start == 0 && s->len == sizeof s->buf - 1) { /* a line longer than the buffer: pass it on as is */
        relay_line(s->out, s->buf, s->len);
        s->len = 0;
    } else {
        memmove(s->buf, s->buf + start, s->len - start);
        s->len -= start;
    }
    return 1;
}

static int exit_code_of(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

static int run_job(const char *const *argv) {
    int out_pipe[2], err_pipe[2];
    if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) {
        fprintf(stderr, "sovtrain launch: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "sovtrain launch: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(err_pipe[1], STDERR_FILENO);
        close(out_pipe[0]), close(out_pipe[1]), close(err_pipe[0]), close(err_pipe[1]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "sovtrain launch: cannot run %s: %s (install openmpi-bin, or set --mpirun)\n", argv[0],
                strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    struct sigaction sa = {.sa_handler = forward_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    close(out_pipe[1]);
    close(err_pipe[1]);
    static stream streams[2];
    streams[0] = (stream){.fd = out_pipe[0], .out = stdout};
    streams[1] = (stream){.fd = err_pipe[0], .out = stderr};
    int open_streams = 2;
    struct pollfd fds[2] = {{.fd = out_pipe[0], .events = POLLIN}, {.fd = err_pipe[0], .events = POLLIN}};
    while (open_streams > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++)
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !pump(&streams[i])) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_streams--;
            }
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return exit_code_of(status);
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
    const char *job_id = set_job_id();
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
    int rc = run_job(job_argv);
    remove_shm_leftovers(job_id);
    return rc;
}
