/* comm_async.c: asynchronous collectives on one progress thread per communicator.
 *
 * Requests run in issue order on the progress thread. A blocking collective first waits for the queue to drain,
 * then runs on the calling thread: no hand-off latency for small messages, and the backend is never entered by
 * two threads at once (MPI is initialised with MPI_THREAD_SERIALIZED). One thread issues the collectives of a
 * communicator. After a failure the communicator is broken: later collectives fail with the first error. */
#include "comm_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sov_request {
    sov_comm *comm;
    sov_op op;
    sov_status status;
    int done;
    char error[512];
    sov_request *next;
};

/* Runs one op on the current thread, recording a failure as the communicator's. */
static sov_status run_op(sov_comm *c, const sov_op *op, char *error, size_t cap) {
    sov_status st = c->broken;
    if (st != SOV_OK) {
        snprintf(error, cap, "%s", c->broken_msg);
        return st;
    }
    if (op->kind != OP_BARRIER && op->count == 0)
        return SOV_OK;
    atomic_store(&c->busy_since, sov_now());
    atomic_store(&c->busy_kind, (int)op->kind);
    atomic_store(&c->busy_seq, op->seq);
    st = c->ops->run(c, op);
    atomic_store(&c->busy_seq, 0);
    if (st != SOV_OK) {
        snprintf(error, cap, "%s", sov_last_error());
        snprintf(c->broken_msg, sizeof c->broken_msg, "%s", sov_last_error());
        c->broken = st;
    }
    return st;
}

static void *progress_main(void *arg) {
    sov_comm *c = arg;
    sov_async *a = &c->async;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        while (!a->head && !a->stop)
            pthread_cond_wait(&a->work, &a->lock);
        if (!a->head)
            break;
        sov_request *r = a->head;
        pthread_mutex_unlock(&a->lock);
        r->status = run_op(c, &r->op, r->error, sizeof r->error);
        pthread_mutex_lock(&a->lock);
        a->head = r->next;
        if (!a->head)
            a->tail = NULL;
        r->done = 1;
        a->pending--;
        pthread_cond_broadcast(&a->done);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

sov_status sov_async_drain(sov_comm *c) {
    sov_async *a = &c->async;
    pthread_mutex_lock(&a->lock);
    while (a->pending > 0)
        pthread_cond_wait(&a->done, &a->lock);
    pthread_mutex_unlock(&a->lock);
    return SOV_OK;
}

static sov_status start_thread(sov_comm *c) {
    if (c->async.started)
        return SOV_OK;
    if (pthread_create(&c->async.thread, NULL, progress_main, c) != 0)
        return sov_fail(SOV_ERR_INTERNAL, "rank %d: cannot start the collectives progress thread", c->rank);
    c->async.started = 1;
    return SOV_OK;
}

sov_status sov_async_submit(sov_comm *c, const sov_op *op, sov_request **req) {
    if (!req) { /* blocking: after everything issued before it, on this thread */
        sov_async_drain(c);
        char error[512];
        sov_status st = run_op(c, op, error, sizeof error);
        return st == SOV_OK ? SOV_OK : sov_fail(st, "%s", error);
    }
    SOV_CHECK(start_thread(c));
    sov_request *r = sov_calloc(1, sizeof *r);
    if (!r)
        return SOV_ERR_NOMEM;
    r->comm = c;
    r->op = *op;
    sov_async *a = &c->async;
    pthread_mutex_lock(&a->lock);
    if (a->tail)
        a->tail->next = r;
    else
        a->head = r;
    a->tail = r;
    a->pending++;
    pthread_cond_signal(&a->work);
    pthread_mutex_unlock(&a->lock);
    *req = r;
    return SOV_OK;
}

sov_status sov_comm_test(sov_request *r, int *done) {
    pthread_mutex_lock(&r->comm->async.lock);
    *done = r->done;
    pthread_mutex_unlock(&r->comm->async.lock);
    return SOV_OK;
}

sov_status sov_comm_wait(sov_request *r) {
    if (!r)
        return SOV_OK;
    sov_async *a = &r->comm->async;
    pthread_mutex_lock(&a->lock);
    while (!r->done)
        pthread_cond_wait(&a->done, &a->lock);
    pthread_mutex_unlock(&a->lock);
    sov_status st = r->status;
    if (st != SOV_OK)
        sov_fail(st, "%s", r->error);
    free(r);
    return st;
}

void sov_async_shutdown(sov_comm *c) {
    sov_async *a = &c->async;
    if (!a->started)
        return;
    pthread_mutex_lock(&a->lock);
    a->stop = 1;
    pthread_cond_signal(&a->work);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thread, NULL);
    a->started = 0;
}
