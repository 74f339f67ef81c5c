/* The part of ONNX Runtime's C ABI that our custom-op kernel (hydraScanOrtOp.cpp) uses, declared here
 * because the onnxruntime wheels ship no headers.
 *
 * Why this is safe: ONNX Runtime's C API is an append-only table of function pointers (`OrtApi`)
 * returned by `OrtApiBase::GetApi(version)`; an entry never moves once released, so a slot number
 * below identifies one function in every ONNX Runtime >= the version that added it. `OrtCustomOp` is
 * likewise only ever extended at the end, and ONNX Runtime reads only the fields that exist in the
 * `version` the op declares. We ask for the API table of ONNX Runtime 1.20 (the oldest this project
 * supports; KernelContext_ParallelFor is in it) and declare custom-op version 16 (status-returning
 * CreateKernelV2/KernelComputeV2).
 * tests/test_native_scan.py runs the kernel inside the installed onnxruntime, so a wrong slot fails CI.
 *
 * Only what we call is declared; the full API is in onnxruntime_c_api.h upstream. */
#ifndef HIERAMAMBA_ORT_ABI_H
#define HIERAMAMBA_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HM_ORT_API_VERSION 20       /* OrtApiBase::GetApi(version): ONNX Runtime >= 1.20 */
#define HM_ORT_CUSTOM_OP_VERSION 16 /* OrtCustomOp::version: the fields declared below */

/* ONNX TensorProto element types (the values ONNX Runtime uses). */
typedef enum HmOrtElementType
{
    HM_ORT_UNDEFINED = 0,
    HM_ORT_FLOAT = 1,
    HM_ORT_FLOAT16 = 10,
    HM_ORT_BFLOAT16 = 16
} HmOrtElementType;

typedef enum HmOrtErrorCode
{
    HM_ORT_FAIL = 1,
    HM_ORT_INVALID_ARGUMENT = 2
} HmOrtErrorCode;

typedef enum HmOrtCharacteristic
{
    HM_ORT_REQUIRED = 0,
    HM_ORT_OPTIONAL = 1
} HmOrtCharacteristic;

/* Opaque ONNX Runtime objects. */
typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;

typedef struct OrtApiBase
{
    const OrtApi* (*GetApi)(uint32_t version);
    const char* (*GetVersionString)(void);
} OrtApiBase;

/* Slots of the OrtApi table that we call (index = position of the function pointer). */
enum HmOrtApiSlot
{
    HM_ORT_CreateStatus = 0,                   /* OrtStatus* (int code, const char* msg) */
    HM_ORT_GetErrorMessage = 2,                /* const char* (const OrtStatus*) */
    HM_ORT_CreateCustomOpDomain = 26,          /* (const char* domain, OrtCustomOpDomain** out) */
    HM_ORT_CustomOpDomain_Add = 27,            /* (OrtCustomOpDomain*, const OrtCustomOp*) */
    HM_ORT_AddCustomOpDomain = 28,             /* (OrtSessionOptions*, OrtCustomOpDomain*) */
    HM_ORT_GetTensorMutableData = 51,          /* (OrtValue*, void** out) */
    HM_ORT_GetTensorElementType = 60,          /* (const OrtTensorTypeAndShapeInfo*, int* out) */
    HM_ORT_GetDimensionsCount = 61,            /* (const OrtTensorTypeAndShapeInfo*, size_t* out) */
    HM_ORT_GetDimensions = 62,                 /* (const OrtTensorTypeAndShapeInfo*, int64_t*, size_t) */
    HM_ORT_GetTensorTypeAndShape = 65,         /* (const OrtValue*, OrtTensorTypeAndShapeInfo** out) */
    HM_ORT_KernelContext_GetInputCount = 88,   /* (const OrtKernelContext*, size_t* out) */
    HM_ORT_KernelContext_GetInput = 90,        /* (const OrtKernelContext*, size_t, const OrtValue** out) */
    HM_ORT_KernelContext_GetOutput = 91,       /* (OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**) */
    HM_ORT_ReleaseStatus = 93,                 /* void (OrtStatus*) */
    HM_ORT_ReleaseTensorTypeAndShapeInfo = 99, /* void (OrtTensorTypeAndShapeInfo*) */
    /* (const OrtKernelContext*, void (*fn)(void* data, size_t i), size_t total, size_t num_batch,
     * void* data): fn(data, i) for i in [0, total) on the session's intra-op thread pool. */
    HM_ORT_KernelContext_ParallelFor = 274
};

/* A custom op as ONNX Runtime reads it, up to the version-16 fields (HM_ORT_CUSTOM_OP_VERSION). */
typedef struct OrtCustomOp OrtCustomOp;
struct OrtCustomOp
{
    uint32_t version;
    void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
    const char* (*GetName)(const OrtCustomOp* op);
    const char* (*GetExecutionProviderType)(const OrtCustomOp* op); /* NULL: CPU */
    int (*GetInputType)(const OrtCustomOp* op, size_t index);
    size_t (*GetInputTypeCount)(const OrtCustomOp* op);
    int (*GetOutputType)(const OrtCustomOp* op, size_t index);
    size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
    void (*KernelCompute)(void* kernel, OrtKernelContext* context);
    void (*KernelDestroy)(void* kernel);
    int (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
    int (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
    int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index); /* 0: default (CPU for the CPU EP) */
    int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
    int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
    int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
    int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
    OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
    OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
};

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* HIERAMAMBA_ORT_ABI_H */
