/* mlp.h (internal): what the MLP's CPU (mlp.c) and CUDA (mlp_cuda.c) implementations share: the shape, the
 * tensor layout in the flat buffers, the initialisation and the batch checks. Both therefore describe the same
 * parameters, start from the same bits for a seed, and accept the same batches. */
#ifndef SOV_MLP_H
#define SOV_MLP_H

#include "device.h"
#include <sovtrain/runtime.h>

#define MLP_MAX_LAYERS 16

/* The MLP's own settings, the same for both implementations, by index into sov_model_config.values. */
enum { SOV_MLP_HIDDEN, SOV_MLP_NUM_SETTINGS };
extern const sov_model_setting sov_mlp_settings[SOV_MLP_NUM_SETTINGS];

/* Layer widths from the config: dims[0] input, dims[1..layers-1] hidden (--hidden), dims[layers] classes. */
sov_status sov_mlp_dims(const sov_model_config *cfg, int *dims, int *layers);
/* Fills m->tensors, num_tensors, num_params: W_l [out, in] then b_l [out] for each layer, back to back. */
sov_status sov_mlp_describe(sov_model *m, const int *dims, int layers);
/* PyTorch's nn.Linear default init, a pure function of the seed, written to m->params (host memory). */
void sov_mlp_init_params(sov_model *m, uint64_t seed);
/* 1..max_batch samples, every label in 0..classes-1. */
sov_status sov_mlp_check_batch(const sov_batch *b, int max_batch, int classes);

#endif
