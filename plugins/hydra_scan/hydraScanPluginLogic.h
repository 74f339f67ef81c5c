// Everything the HydraScan TensorRT plugin decides, in plain C++ with no TensorRT include, so it is
// built and unit-tested on machines without TensorRT (plugins/tests/hydraScanLogicTest.cpp).
// hydraScanPlugin.cpp only translates TensorRT's types to these and back.
#pragma once

#include "hydraScanKernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace hieramamba
{
namespace hydra_scan
{
namespace plugin
{

// Identity as the ONNX node names it (DESIGN §3: op_type, plugin_version, plugin_namespace).
constexpr const char* kPluginName = "HydraScan";
constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "hieramamba";

// Inputs in op-signature order. The two initial states are present together or not at all: the
// plugin sees 11 inputs with them and 9 without (see README: trailing optional ONNX inputs must be
// omitted, not given empty names).
enum InputIndex : int32_t
{
    kInX = 0,
    kInDtF,
    kInDtB,
    kInA,
    kInDtBias,
    kInBF,
    kInCF,
    kInBB,
    kInCB,
    kInStateF0,
    kInStateB0
};
enum OutputIndex : int32_t
{
    kOutY = 0,
    kOutStateF,
    kOutStateB
};
constexpr int32_t kNbInputsWithoutStates = 9;
constexpr int32_t kNbInputsWithStates = 11;
constexpr int32_t kNbOutputs = 3;

const char* inputName(int32_t index);
const char* outputName(int32_t index);
bool hasInitialStates(int32_t nbInputs);
std::string checkIoCount(int32_t nbInputs, int32_t nbOutputs);

// ---- Attributes ---------------------------------------------------------------------------------

// What a serialized engine's plugin assumes about this library (the CUDA kernel's workspace layout
// above all). Engines record it; a library with another value refuses them (createPlugin at
// TensorRT's runtime phase) instead of running with a workspace sized for another kernel.
// 1: the sequential kernel (fp32 y accumulator; engines of that era did not record it).
// 2: the chunked kernel (per-chunk states and decays), workspace sized for the build's
//    tiles-per-chunk setting and not recorded.
// 3: the workspace is a function of shape and dtype only, and the engine records the bytes it was
//    built with (workspace_size), which enqueue checks the run's plan against.
constexpr int32_t kSerializationVersion = 3;

struct Attributes
{
    // Time-chunk length of the chunked formulation in the portable ONNX function body. The CUDA
    // kernel picks its own chunk length (planCuda); results differ only by rounding.
    int32_t chunkSize = 256;
    // 1 with state_f0/state_b0 inputs (11 inputs), 0 without (9), -1 not stated. The plugin learns it
    // from the input count at build time and serializes it, because enqueue() is not told the count.
    // An ONNX node may state it; it must then agree with the node's input count.
    int32_t hasInitialStates = -1;
    // kSerializationVersion of the library that serialized the engine; 0 when not given (an ONNX
    // node at build time, or an engine serialized before the field existed).
    int32_t serializationVersion = 0;
    // Workspace bytes the engine was built with: the largest getWorkspaceSize over the plugin's
    // configurePlugin calls (recordWorkspace), i.e. what TensorRT grants enqueue. -1 = not recorded
    // (not configured yet; createPlugin drops a value given at the build phase).
    int64_t workspaceSize = -1;
};

// At TensorRT's runtime phase (engine deserialization): error unless the engine was serialized by
// a library with this kSerializationVersion and records its workspace size.
std::string checkSerializationVersion(const Attributes& attrs);

// Values mirror nvinfer1::PluginFieldType (checked by static_assert in hydraScanPlugin.cpp).
enum class FieldType : int32_t
{
    kFLOAT16 = 0,
    kFLOAT32 = 1,
    kFLOAT64 = 2,
    kINT8 = 3,
    kINT16 = 4,
    kINT32 = 5,
    kCHAR = 6,
    kDIMS = 7,
    kUNKNOWN = 8,
    kBF16 = 9,
    kINT64 = 10
};

// A TensorRT-free view of nvinfer1::PluginField.
struct FieldView
{
    const char* name;
    const void* data;
    FieldType type;
    int32_t length;
};

// What the creator advertises (getFieldNames): name, type, length; data is NULL.
const std::vector<FieldView>& attributeFieldSpecs();

// Parses creator fields. Missing fields keep their defaults (the ONNX parser passes only the node's
// attributes); unknown names, wrong types/lengths and out-of-range values are errors. Integers are
// accepted as INT32 (what the ONNX parser produces for an INT attribute) or INT64.
std::string parseAttributes(const FieldView* fields, int32_t nbFields, Attributes* out);

// Error when attrs.hasInitialStates is stated and contradicts the input count.
std::string checkStatesAgree(const Attributes& attrs, int32_t nbInputs);

// Owns the bytes behind the serialized fields, so the views stay valid while the object lives.
class SerializedAttributes
{
public:
    explicit SerializedAttributes(const Attributes& attrs);
    SerializedAttributes(const SerializedAttributes&) = delete;
    SerializedAttributes& operator=(const SerializedAttributes&) = delete;
    // Rewrites the values in place; the views (and pointers handed to TensorRT) stay valid.
    void update(const Attributes& attrs);
    const std::vector<FieldView>& fields() const
    {
        return mFields;
    }

private:
    int32_t mChunkSize;
    int32_t mHasInitialStates;
    int32_t mSerializationVersion = kSerializationVersion;
    int64_t mWorkspaceSize;
    std::vector<FieldView> mFields;
};

// Human-readable attribute summary (plugin metadata string, error messages).
std::string describe(const Attributes& attrs);

// ---- Types and formats --------------------------------------------------------------------------

enum class IoType
{
    kFLOAT32,
    kFLOAT16,
    kBFLOAT16,
    kOTHER
};

struct IoDesc
{
    IoType type;
    bool linear; // TensorFormat::kLINEAR
};

// TensorRT's supportsFormatCombination: decides position `pos` from inOut[0..pos] only.
//   x: fp32 | fp16 | bf16;  dt_f: fp32 or x's type;  dt_b, A, dt_bias: dt_f's type;
//   B_f, C_f, B_b, C_b, y: x's type;  state_f0, state_b0, state_f, state_b: fp32;  all linear.
bool supportsCombination(int32_t pos, const IoDesc* inOut, int32_t nbInputs, int32_t nbOutputs);

// getOutputDataTypes: y takes x's type, the states are fp32.
std::string outputTypes(const IoType* inputTypes, int32_t nbInputs, IoType* outputs, int32_t nbOutputs);

// Kernel dtype code of a supported IoType (kOTHER maps to -1).
int toDtypeCode(IoType t);

// ---- Shapes -------------------------------------------------------------------------------------

using Dims = std::vector<int64_t>; // -1 marks a dimension unknown at build time

int32_t expectedRank(int32_t input);

// Where each output dimension comes from: TensorRT's getOutputShapes copies these dimension
// expressions, so shapes stay symbolic (dynamic batch and time) with no arithmetic.
struct DimSource
{
    int32_t input;
    int32_t axis;
};
const std::vector<DimSource>& outputDimSources(int32_t output);

// Checks ranks and that every shared symbol (B, L, H, P, G, N) agrees across inputs, skipping unknown
// (-1) dimensions, and that G divides H. When every dimension is known, fills *shape (may be NULL).
std::string validateInputDims(const std::vector<Dims>& inputs, HmScanShape* shape);

std::string computeOutputDims(const std::vector<Dims>& inputs, std::vector<Dims>* outputs);

// ---- Workspace ----------------------------------------------------------------------------------

// configurePlugin: plans the profile's largest shape (x's max dims, B_f's max G and N, x's type)
// with the current tiles-per-chunk setting and fills *workspaceBytes (cudaWorkspaceSize: the same
// for every setting). Error when a dimension is unknown, the shape is invalid, the CUDA kernel
// cannot run it, or the setting is invalid; the build must then fail.
std::string planProfile(const Dims& xMaxDims, const Dims& bMaxDims, IoType xType, size_t* workspaceBytes);

// getWorkspaceSize: planProfile's bytes, 0 when it fails (configurePlugin has refused the profile).
size_t workspaceSize(const Dims& xMaxDims, const Dims& bMaxDims, IoType yType);

// What an engine records after a configurePlugin call planned `bytes`: the largest so far (TensorRT
// may configure one layer for several profiles and formats before serializing it; a run never
// needs more than its own profile's bytes, so the largest refuses no valid run).
int64_t recordWorkspace(int64_t recorded, size_t bytes);

// onShapeChange / enqueue: error unless the plan of this run (shape, dtype, the tiles-per-chunk
// setting now) fits the workspace the engine was built with (grantedBytes = Attributes::
// workspaceSize; -1: not recorded, refused). The message names both sizes and says to rebuild.
std::string checkWorkspace(const HmScanShape& s, HmDType act, int64_t grantedBytes);

} // namespace plugin
} // namespace hydra_scan
} // namespace hieramamba
