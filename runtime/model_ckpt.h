/* model_ckpt.h (internal): a model's parameters as checkpoint tensors, one per model tensor, named as the model
 * names them (PyTorch's style, which safetensors exports keep). */
#ifndef SOV_MODEL_CKPT_H
#define SOV_MODEL_CKPT_H

#include "device.h"
#include <sovtrain/ckpt.h>
#include <sovtrain/runtime.h>

/* out[0 .. m->num_tensors) = the model's tensors as views of `params` (its flat parameters: host or GPU memory).
 * Fails when the tensors do not cover the flat buffer exactly, in order (what is outside them would be lost). */
sov_status sov_model_ckpt_tensors(const sov_model *m, const float *params, sov_ckpt_tensor *out);
/* The checkpoint holds each of the model's tensors as f32 of the model's shape: a checkpoint of another model (or
 * a damaged one) is refused, naming the tensor, before anything is read into the model's memory. */
sov_status sov_model_ckpt_check(const sov_ckpt *c, const sov_model *m);
/* out[0 .. m->num_tensors) = reads of the model's tensors into host memory `params` (flat, num_params); check the
 * checkpoint first. */
void sov_model_ckpt_requests(const sov_model *m, float *params, sov_ckpt_read_request *out);

#endif
