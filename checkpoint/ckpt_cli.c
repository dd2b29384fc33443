/* ckpt_cli.c: `sovtrain ckpt ls|verify|inspect|export`, the operators' tools. */
#include "catalog.h"
#include "fsio.h"
#include <sovtrain/ckpt.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What a failed open or verify means for the operator: a version this sovtrain does not read is not damage, nor
 * is a missing or wrong key (refused), nor a file or key command that cannot be used (an error). */
static const char *verdict(sov_status st) {
    switch (st) {
    case SOV_OK: return "ok";
    case SOV_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case SOV_ERR_INVALID: return "REFUSED";
    case SOV_ERR_FORMAT: return "DAMAGED";
    default: return "ERROR";
    }
}

static void usage(FILE *out) {
    fprintf(out, "usage: sovtrain ckpt ls DIR [KEY] [SIGNED]   checkpoints under DIR: step, size, ratio, status\n"
                 "       sovtrain ckpt verify PATH [KEY] [SIGNED]\n"
                 "                                             check every checksum of DIR/step-N (exit 1 if damaged\n"
                 "                                             or of a format version it does not read)\n"
                 "       sovtrain ckpt inspect PATH [KEY]      summary of the manifest\n"
                 "       sovtrain ckpt export PATH [KEY] [SIGNED] --format safetensors -o FILE\n"
                 "       sovtrain ckpt rekey PATH KEY (--new-key-file PATH | --new-key-command CMD)\n"
                 "                                             rotate the key of an encrypted checkpoint, or of every\n"
                 "                                             one under DIR: rewraps its data key, data untouched\n"
                 "PATH is a checkpoint directory (DIR/step-N), DIR/latest (the one it names), or DIR itself, meaning\n"
                 "its newest good checkpoint.\n"
                 "KEY, for an encrypted checkpoint: --ckpt-key-file PATH or --ckpt-key-command CMD, as given to\n"
                 "`sovtrain train`. Without it, verify checks the stored bytes only, and export cannot read.\n"
                 "SIGNED: --public-key PEM: the checkpoint must be signed by this ECDSA public key (model.sig, the\n"
                 "OpenSSF model signing format), every file as signed; otherwise it counts as damaged.\n");
}

/* A subcommand's arguments: one checkpoint location, and options. */
typedef struct cli_args {
    const char *where, *format, *out, *key_file, *key_command, *public_key, *new_key_file, *new_key_command;
} cli_args;

/* Parses argv[0..argc) of subcommand `cmd`; export alone takes --format and -o. Returns 0, or 2 after a message. */
static int parse_args(const char *cmd, int argc, char **argv, cli_args *a) {
    *a = (cli_args){0};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i], **into = NULL;
        if (!strcmp(flag, "--ckpt-key-file"))
            into = &a->key_file;
        else if (!strcmp(flag, "--ckpt-key-command"))
            into = &a->key_command;
        else if (!strcmp(flag, "--public-key"))
            into = &a->public_key;
        else if (!strcmp(cmd, "rekey") && !strcmp(flag, "--new-key-file"))
            into = &a->new_key_file;
        else if (!strcmp(cmd, "rekey") && !strcmp(flag, "--new-key-command"))
            into = &a->new_key_command;
        else if (!strcmp(cmd, "export") && !strcmp(flag, "--format"))
            into = &a->format;
        else if (!strcmp(cmd, "export") && !strcmp(flag, "-o"))
            into = &a->out;
        if (into && i + 1 < argc) {
            *into = argv[++i];
        } else if (into || flag[0] == '-' || a->where) {
            fprintf(stderr, "sovtrain ckpt %s: %s \"%s\" (see sovtrain ckpt --help)\n", cmd,
                    into ? "a value is missing after" : flag[0] == '-' ? "unknown option" : "one path only, not also",
                    flag);
            return 2;
        } else {
            a->where = flag;
        }
    }
    if (!a->where) {
        fprintf(stderr, "sovtrain ckpt %s: which checkpoint? (see sovtrain ckpt --help)\n", cmd);
        return 2;
    }
    if (a->key_file && a->key_command) {
        fprintf(stderr, "sovtrain ckpt %s: give --ckpt-key-file or --ckpt-key-command, not both\n", cmd);
        return 2;
    }
    return 0;
}

/* The key the arguments name, or NULL. */
static sov_status key_of(const cli_args *a, sov_ckpt_key **key) {
    *key = NULL;
    if (a->key_file)
        return sov_ckpt_key_from_file(a->key_file, key);
    if (a->key_command)
        return sov_ckpt_key_from_command(a->key_command, key);
    return SOV_OK;
}

/* Opens `path` with the arguments' key, after checking its signature when they give a public key. */
static sov_status open_with(const cli_args *a, const char *path, sov_ckpt **c) {
    if (a->public_key)
        SOV_CHECK(sov_ckpt_verify_signature(path, a->public_key));
    sov_ckpt_key *key;
    SOV_CHECK(key_of(a, &key));
    sov_status st = sov_ckpt_open_key(path, key, c);
    sov_ckpt_key_free(key);
    return st;
}

/* DIR/latest, the pointer file each commit replaces last ("step-N"): the checkpoint it names. */
static sov_status resolve_pointer(const char *file, char *path, size_t cap) {
    char named[64] = "";
    FILE *f = fopen(file, "r");
    int ok = f && fgets(named, sizeof named, f) != NULL;
    if (f)
        fclose(f);
    named[strcspn(named, "\n")] = '\0';
    long step;
    char extra;
    if (!ok || sscanf(named, "step-%ld%c", &step, &extra) != 1 || step < 0)
        return sov_fail(SOV_ERR_FORMAT, "%s: not a checkpoint, nor a latest pointer naming one (\"step-N\")", file);
    const char *slash = strrchr(file, '/');
    int dir_len = slash ? (int)(slash - file) : 1;
    snprintf(path, cap, "%.*s/%s", dir_len, slash ? file : ".", named);
    char m[4300];
    struct stat sb;
    snprintf(m, sizeof m, "%s/manifest.json", path);
    if (stat(m, &sb) != 0)
        return sov_fail(SOV_ERR_IO, "%s names %s, which is not a checkpoint (no manifest.json): %s", file, path,
                        strerror(errno));
    return SOV_OK;
}

/* A checkpoint directory: PATH itself when it has a manifest, the one a latest pointer names, else the newest good
 * one under PATH. */
static sov_status resolve(const char *arg, char *path, size_t cap) {
    char m[4200];
    struct stat sb;
    snprintf(m, sizeof m, "%s/manifest.json", arg);
    if (stat(m, &sb) == 0) {
        snprintf(path, cap, "%s", arg);
        return SOV_OK;
    }
    if (stat(arg, &sb) == 0 && S_ISREG(sb.st_mode))
        return resolve_pointer(arg, path, cap);
    return sov_ckpt_find(arg, path, cap, NULL, NULL);
}

/* Raw and stored bytes of a checkpoint, from its manifest. */
static void sizes(const sov_ckpt *c, double *raw, double *stored) {
    const sov_catalog *cat = sov_ckpt_catalog(c);
    size_t i;
    json_t *f;
    *raw = *stored = 0;
    for (int b = 0; b < cat->nbuffers; b++)
        *raw += (double)sov_dtype_size(cat->buffers[b].dtype) * (double)cat->buffers[b].count;
    json_array_foreach(json_object_get(sov_ckpt_manifest(c), "files"), i, f)
        *stored += (double)json_integer_value(json_object_get(f, "bytes"));
}

static int cmd_ls(const cli_args *a) {
    const char *dir = a->where;
    long steps[4096];
    int n = sov_ckpt_list_steps(dir, steps, 4096);
    char latest[64] = "", *text = NULL, lpath[4200];
    size_t len;
    snprintf(lpath, sizeof lpath, "%s/latest", dir);
    if (sov_read_file(lpath, 256, &text, &len) == SOV_OK) {
        snprintf(latest, sizeof latest, "%.*s", (int)strcspn(text, "\r\n"), text);
        free(text);
    }
    printf("%-14s %10s %12s %12s %7s  %s\n", "checkpoint", "step", "state MB", "stored MB", "ratio", "status");
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char path[4200], name[64];
        snprintf(name, sizeof name, "step-%ld", steps[i]);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        sov_ckpt *c;
        sov_status st = open_with(a, path, &c);
        double raw = 0, stored = 0;
        char sealed[300] = "";
        if (st == SOV_OK) {
            sizes(c, &raw, &stored);
            if (sov_ckpt_key_id(c))
                snprintf(sealed, sizeof sealed, " (encrypted, key id %s%s)", sov_ckpt_key_id(c),
                         a->key_file || a->key_command ? "" : ": stored bytes only");
            st = sov_ckpt_verify(c);
            sov_ckpt_close(c);
        }
        bad |= st != SOV_OK;
        printf("%-14s %10ld %12.2f %12.2f %7.3f  %s%s%s%s\n", name, steps[i], raw / 1e6, stored / 1e6,
               stored > 0 ? raw / stored : 0.0, verdict(st), st == SOV_OK ? "" : ": ",
               st == SOV_OK ? (strcmp(latest, name) == 0 ? " (latest)" : "") : sov_last_error(),
               st == SOV_OK ? sealed : "");
    }
    if (n == 0)
        printf("(no checkpoints under %s)\n", dir);
    return bad ? 1 : 0;
}

static int cmd_verify(const cli_args *a) {
    char path[4200];
    sov_ckpt *c = NULL;
    sov_status st = resolve(a->where, path, sizeof path);
    if (st != SOV_OK) {
        fprintf(stderr, "sovtrain ckpt verify: %s\n", sov_last_error());
        return 1;
    }
    st = open_with(a, path, &c);
    if (st == SOV_OK)
        st = sov_ckpt_verify(c);
    if (st != SOV_OK) {
        fprintf(stderr, "sovtrain ckpt verify: %s: %s\n", verdict(st), sov_last_error());
        sov_ckpt_close(c);
        return 1;
    }
    if (!sov_ckpt_key_id(c))
        printf("%s: ok (step %ld, every chunk checksum verified)\n", path, sov_ckpt_step(c));
    else if (a->key_file || a->key_command)
        printf("%s: ok (step %ld, encrypted with key id %s: the manifest's MAC and every chunk authenticated, "
               "decrypted and its checksums verified)\n", path, sov_ckpt_step(c), sov_ckpt_key_id(c));
    else
        printf("%s: ok (step %ld, encrypted with key id %s: the stored bytes verified; give the key to check the "
               "contents too)\n", path, sov_ckpt_step(c), sov_ckpt_key_id(c));
    if (a->public_key)
        printf("%s: signed by %s: the signature and every file's SHA-256 verified\n", path, a->public_key);
    sov_ckpt_close(c);
    return 0;
}

/* The state's metadata: whole when it fits a few lines; else its beginning and where to read the rest (a Python
 * state's tree or DCP's metadata run to hundreds of kB). */
#define META_SHOWN 400
static void print_meta(const char *meta, const char *path, int sealed) {
    size_t n = strlen(meta);
    if (n <= META_SHOWN)
        printf("meta        %s\n", meta);
    else if (sealed) /* nowhere in the clear to point at */
        printf("meta        %.*s... (%.1f kB in all)\n", META_SHOWN, meta, (double)n / 1e3);
    else
        printf("meta        %.*s... (%.1f kB in all: jq .meta %s/manifest.json)\n", META_SHOWN, meta, (double)n / 1e3,
               path);
}

static int cmd_inspect(const cli_args *a) {
    char path[4200];
    sov_ckpt *c = NULL;
    sov_status st = resolve(a->where, path, sizeof path);
    if (st == SOV_OK)
        st = open_with(a, path, &c);
    if (st != SOV_OK) {
        fprintf(stderr, "sovtrain ckpt inspect: %s\n", sov_last_error());
        return 1;
    }
    const json_t *m = sov_ckpt_manifest(c);
    double raw, stored;
    sizes(c, &raw, &stored);
    printf("checkpoint  %s\nstep        %ld\nworld size  %lld (writers)\nsovtrain    %s, format %lld\n", path,
           sov_ckpt_step(c), (long long)json_integer_value(json_object_get(m, "world_size")),
           json_string_value(json_object_get(m, "sovtrain_version")),
           (long long)json_integer_value(json_object_get(m, "format_version")));
    printf("state       %.2f MB raw, %.2f MB stored (ratio %.3f)\nbuffers    ", raw / 1e6, stored / 1e6,
           stored > 0 ? raw / stored : 0.0);
    const sov_catalog *cat = sov_ckpt_catalog(c);
    for (int b = 0; b < cat->nbuffers; b++)
        printf(" %s[%zu]", cat->buffers[b].name, cat->buffers[b].count);
    int per_dtype[SOV_NUM_DTYPES] = {0}, sharded = 0;
    for (int t = 0; t < cat->ntensors; t++) {
        per_dtype[cat->tensors[t].dtype]++;
        sharded += cat->tensors[t].nshards > 1 || cat->buffers[cat->tensors[t].shards[0].buffer].writer >= 0;
    }
    printf("\ntensors     %d (", cat->ntensors);
    for (int d = 0, first = 1; d < SOV_NUM_DTYPES; d++)
        if (per_dtype[d]) {
            printf("%s%d %s", first ? "" : ", ", per_dtype[d], sov_dtype_name((sov_dtype)d));
            first = 0;
        }
    printf("; %d sharded)\n", sharded);
    const json_t *enc = json_object_get(m, "encryption");
    if (enc)
        printf("encryption  %s, key id %s (data key wrapped by %s)\n",
               json_string_value(json_object_get(enc, "cipher")), sov_ckpt_key_id(c),
               json_string_value(json_object_get(enc, "wrap")));
    if (enc && !a->key_file && !a->key_command)
        printf("meta        (encrypted: give the key to read it)\n");
    else
        print_meta(sov_ckpt_meta_json(c), path, enc != NULL);
    sov_ckpt_close(c);
    return 0;
}

static int cmd_export(const cli_args *a) {
    const char *format = a->format, *out = a->out;
    if (!format || strcmp(format, "safetensors") != 0 || !out) {
        fprintf(stderr, "sovtrain ckpt export: needs --format safetensors and -o FILE\n");
        return 2;
    }
    char path[4200];
    sov_ckpt *c = NULL;
    sov_status st = resolve(a->where, path, sizeof path);
    if (st == SOV_OK)
        st = open_with(a, path, &c);
    if (st == SOV_OK)
        st = sov_ckpt_export_safetensors(c, out);
    if (st != SOV_OK) {
        fprintf(stderr, "sovtrain ckpt export: %s\n", sov_last_error());
        sov_ckpt_close(c);
        return 1;
    }
    printf("wrote %s (%d tensors of step %ld)\n", out, sov_ckpt_num_tensors(c), sov_ckpt_step(c));
    sov_ckpt_close(c);
    return 0;
}

/* The checkpoints PATH names for a rotation: itself, or every one under a checkpoint directory. */
static int rekey_targets(const char *where, char (*paths)[4200], int cap) {
    char m[4300];
    snprintf(m, sizeof m, "%s/manifest.json", where);
    if (access(m, F_OK) == 0) {
        snprintf(paths[0], 4200, "%s", where);
        return 1;
    }
    long steps[4096];
    int n = sov_ckpt_list_steps(where, steps, cap < 4096 ? cap : 4096);
    for (int i = 0; i < n; i++)
        snprintf(paths[i], 4200, "%s/step-%ld", where, steps[i]);
    return n;
}

static int cmd_rekey(const cli_args *a) {
    if (!a->key_file == !a->key_command || !a->new_key_file == !a->new_key_command) {
        fprintf(stderr, "sovtrain ckpt rekey: give the old key (--ckpt-key-file or --ckpt-key-command) and the new "
                        "one (--new-key-file or --new-key-command)\n");
        return 2;
    }
    sov_ckpt_key *old_key = NULL, *new_key = NULL;
    sov_status st = key_of(a, &old_key);
    if (st == SOV_OK)
        st = a->new_key_file ? sov_ckpt_key_from_file(a->new_key_file, &new_key)
                             : sov_ckpt_key_from_command(a->new_key_command, &new_key);
    static char paths[4096][4200];
    int n = st == SOV_OK ? rekey_targets(a->where, paths, 4096) : 0, bad = st != SOV_OK;
    if (st == SOV_OK && n == 0) {
        fprintf(stderr, "sovtrain ckpt rekey: no checkpoint at %s\n", a->where);
        bad = 1;
    }
    for (int i = 0; i < n; i++) {
        if (sov_ckpt_rekey(paths[i], old_key, new_key) == SOV_OK) {
            printf("%s: rekeyed (its data key is now wrapped by the %s)\n", paths[i], sov_ckpt_key_describe(new_key));
        } else {
            fprintf(stderr, "sovtrain ckpt rekey: %s\n", sov_last_error());
            bad = 1;
        }
    }
    if (st != SOV_OK)
        fprintf(stderr, "sovtrain ckpt rekey: %s\n", sov_last_error());
    sov_ckpt_key_free(old_key);
    sov_ckpt_key_free(new_key);
    return bad ? 1 : 0;
}

int sov_ckpt_main(int argc, char **argv) {
    if (argc < 3) {
        usage(argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? stdout : stderr);
        return argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 2;
    }
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { /* `sovtrain ckpt export --help` */
            usage(stdout);
            return 0;
        }
    const char *cmd = argv[1];
    static const struct {
        const char *name;
        int (*run)(const cli_args *a);
    } subcommands[] = {{"ls", cmd_ls},         {"verify", cmd_verify}, {"inspect", cmd_inspect},
                       {"export", cmd_export}, {"rekey", cmd_rekey}};
    for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++) {
        if (strcmp(cmd, subcommands[i].name) != 0)
            continue;
        cli_args a;
        int bad = parse_args(cmd, argc - 2, argv + 2, &a);
        return bad ? bad : subcommands[i].run(&a);
    }
    fprintf(stderr, "sovtrain ckpt: unknown subcommand \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
