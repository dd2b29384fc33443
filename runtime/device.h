/* device.h: the GPU one rank computes on: its CUDA device, the stream every kernel and cuBLAS call of the rank
 * runs on, and device memory. A build without CUDA keeps the same interface and fails sov_device_open with
 * SOV_ERR_UNSUPPORTED, so callers need no #ifdef.
 *
 * One stream per rank keeps every kernel in issue order; the communicator orders its collectives after that
 * stream (sov_comm_set_stream), and copies to the host wait for it. */
#ifndef SOV_DEVICE_H
#define SOV_DEVICE_H

#include "sov_internal.h"

typedef enum sov_device_kind { SOV_DEVICE_AUTO, SOV_DEVICE_CPU, SOV_DEVICE_CUDA } sov_device_kind;

/* Parses "auto", "cpu" or "cuda". */
sov_status sov_device_kind_parse(const char *name, sov_device_kind *out);
const char *sov_device_kind_name(sov_device_kind kind);

typedef struct sov_device sov_device;

/* 1 in a build with the CUDA path, 0 otherwise. */
int sov_device_cuda_built(void);

/* Opens GPU `local_rank` modulo the GPUs visible (CUDA_VISIBLE_DEVICES applies): sets it current on this
 * thread, creates the rank's stream and cuBLAS handle. */
sov_status sov_device_open(sov_device **out, int local_rank);
void sov_device_close(sov_device *dev);
/* The CUDA ordinal, the device's name ("NVIDIA H200") and, as opaque pointers, its cudaStream_t and
 * cublasHandle_t. */
int sov_device_ordinal(const sov_device *dev);
const char *sov_device_name(const sov_device *dev);
void *sov_device_stream(const sov_device *dev);
void *sov_device_blas(const sov_device *dev);

/* Device memory, zeroed, 256-byte aligned; NULL (with sov_last_error set) when it cannot be had. */
void *sov_device_alloc(sov_device *dev, size_t bytes);
void sov_device_free(sov_device *dev, void *ptr);
/* Pinned host memory (page-locked: copies to and from the device run at full speed); zeroed. */
void *sov_device_alloc_host(sov_device *dev, size_t bytes);
void sov_device_free_host(sov_device *dev, void *ptr);

/* Copies on the rank's stream, ordered after every kernel issued before; both return when the copy is done. */
sov_status sov_device_to_host(sov_device *dev, void *dst, const void *src, size_t bytes);
sov_status sov_device_from_host(sov_device *dev, void *dst, const void *src, size_t bytes);
/* Starts a host-to-device copy on the stream and returns; `src` must stay unchanged until the stream passes it
 * (pinned memory, or a buffer the caller does not touch before the next synchronising call). */
sov_status sov_device_from_host_async(sov_device *dev, void *dst, const void *src, size_t bytes);
/* Waits for everything issued on the stream; reports a kernel's failure. */
sov_status sov_device_sync(sov_device *dev);
/* The last kernel launch's error, if any, named after `what`. */
sov_status sov_device_check_launch(sov_device *dev, const char *what);

#endif
