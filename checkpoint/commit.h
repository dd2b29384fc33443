/* commit.h (internal): how the ranks' parts of one save become a checkpoint (docs/checkpoint-format.md). Each rank
 * writes its data file under DIR/step-<N>.partial/ and makes it durable; every rank but 0 then reports it there
 * with a marker (rank-<r>.json), or reports why it could not (rank-<r>.failed). Rank 0 waits for every marker,
 * writes the manifest last, renames the directory to DIR/step-<N>, points DIR/latest at it, and only then prunes
 * older checkpoints. */
#ifndef SOV_CKPT_COMMIT_H
#define SOV_CKPT_COMMIT_H

#include "crypto.h"
#include "sov_internal.h"
#include <sovtrain/ckpt.h>

#include <jansson.h>
#include <stdint.h>

typedef struct sov_commit {
    const char *dir;     /* the checkpoint directory */
    const char *partial; /* DIR/step-<N>.partial */
    const char *final;   /* DIR/step-<N> */
    long step;
    int rank, world;
    uint64_t save_id;    /* the same on every rank for one save: a marker of another attempt is not this one's */
    double timeout_s;    /* how long rank 0 waits for the other ranks' markers */
    const sov_key *mac_key; /* an encrypted checkpoint: the manifest carries its HMAC under this key */
    int sign;                       /* every marker carries its data file's "sha256" ... */
    const sov_ckpt_signer *signer;  /* ... and rank 0 signs them and the manifest into model.sig */
} sov_commit;

/* Rank r > 0: this rank's data file is durable; marker describes it (save_id, rank, file, bytes, chunks, and
 * sha256 when signing). */
sov_status sov_commit_report(const sov_commit *c, json_t *marker);
/* Rank r > 0: this rank's part failed, and why, so that rank 0 stops waiting for it (best effort). */
void sov_commit_report_failure(const sov_commit *c, const char *message);
/* Rank 0: gathers the markers (its own is `mine`, which it edits but does not keep), writes the manifest from
 * manifest_base and them, renames the directory into place and updates `latest`. */
sov_status sov_commit_publish(const sov_commit *c, const json_t *manifest_base, json_t *mine);
/* Rank 0, after a publish: keeps this checkpoint and the keep - 1 before it, and removes leftover partial
 * directories. */
void sov_commit_prune(const sov_commit *c, int keep);

#endif
