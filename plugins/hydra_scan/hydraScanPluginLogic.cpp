// Plugin decisions without TensorRT; see hydraScanPluginLogic.h.
#include "hydraScanPluginLogic.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>

namespace hieramamba
{
namespace hydra_scan
{
namespace plugin
{
namespace
{

constexpr const char* kChunkSizeField = "chunk_size";
constexpr const char* kHasStatesField = "has_initial_states";
constexpr const char* kSerializationField = "serialization_version";
constexpr const char* kWorkspaceField = "workspace_size";

const char* typeName(FieldType t)
{
    switch (t)
    {
    case FieldType::kINT32: return "INT32";
    case FieldType::kINT64: return "INT64";
    case FieldType::kFLOAT32: return "FLOAT32";
    case FieldType::kCHAR: return "CHAR";
    default: return "another type";
    }
}

// One INT32/INT64 scalar field, widened to int64.
std::string readInt(const FieldView& f, int64_t* v)
{
    if (f.length != 1 || f.data == nullptr || (f.type != FieldType::kINT32 && f.type != FieldType::kINT64))
    {
        return std::string("HydraScan: attribute ") + f.name + " must be one INT32 or INT64, got "
            + std::to_string(f.length) + " value(s) of " + typeName(f.type);
    }
    if (f.type == FieldType::kINT32)
    {
        int32_t v32;
        std::memcpy(&v32, f.data, sizeof(v32));
        *v = v32;
    }
    else
    {
        std::memcpy(v, f.data, sizeof(*v));
    }
    return {};
}

// One integer field within [lo, hi] into *out; `allowed` words the range for the message.
std::string readIntIn(const FieldView& f, int64_t lo, int64_t hi, const char* allowed, int32_t* out)
{
    int64_t v = 0;
    std::string e = readInt(f, &v);
    if (e.empty() && (v < lo || v > hi))
    {
        e = std::string("HydraScan: attribute ") + f.name + " must be " + allowed + ", got " + std::to_string(v);
    }
    if (e.empty())
    {
        *out = static_cast<int32_t>(v);
    }
    return e;
}

bool isFloatType(IoType t)
{
    return t == IoType::kFLOAT32 || t == IoType::kFLOAT16 || t == IoType::kBFLOAT16;
}

// One symbol of the op signature and every (input, axis) that carries it.
struct Symbol
{
    const char* name;
    std::vector<DimSource> uses;
};

const std::vector<Symbol>& symbols()
{
    static const std::vector<Symbol> table = {
        {"B", {{kInX, 0}, {kInDtF, 0}, {kInDtB, 0}, {kInBF, 0}, {kInCF, 0}, {kInBB, 0}, {kInCB, 0}, {kInStateF0, 0},
                  {kInStateB0, 0}}},
        {"L", {{kInX, 1}, {kInDtF, 1}, {kInDtB, 1}, {kInBF, 1}, {kInCF, 1}, {kInBB, 1}, {kInCB, 1}}},
        {"H", {{kInX, 2}, {kInDtF, 2}, {kInDtB, 2}, {kInA, 0}, {kInDtBias, 0}, {kInStateF0, 1}, {kInStateB0, 1}}},
        {"P", {{kInX, 3}, {kInStateF0, 2}, {kInStateB0, 2}}},
        {"G", {{kInBF, 2}, {kInCF, 2}, {kInBB, 2}, {kInCB, 2}}},
        {"N", {{kInBF, 3}, {kInCF, 3}, {kInBB, 3}, {kInCB, 3}, {kInStateF0, 3}, {kInStateB0, 3}}},
    };
    return table;
}

} // namespace

const char* inputName(int32_t index)
{
    static const char* const names[] = {
        "x", "dt_f", "dt_b", "A", "dt_bias", "B_f", "C_f", "B_b", "C_b", "state_f0", "state_b0"};
    return index >= 0 && index < kNbInputsWithStates ? names[index] : "?";
}

const char* outputName(int32_t index)
{
    static const char* const names[] = {"y", "state_f", "state_b"};
    return index >= 0 && index < kNbOutputs ? names[index] : "?";
}

bool hasInitialStates(int32_t nbInputs)
{
    return nbInputs == kNbInputsWithStates;
}

std::string checkIoCount(int32_t nbInputs, int32_t nbOutputs)
{
    std::ostringstream err;
    if (nbInputs != kNbInputsWithoutStates && nbInputs != kNbInputsWithStates)
    {
        err << "HydraScan: expected " << kNbInputsWithoutStates << " inputs (no initial states) or "
            << kNbInputsWithStates << " (with state_f0, state_b0), got " << nbInputs;
        return err.str();
    }
    if (nbOutputs != kNbOutputs)
    {
        err << "HydraScan: expected " << kNbOutputs << " outputs (y, state_f, state_b), got " << nbOutputs;
        return err.str();
    }
    return {};
}

// ---- Attributes ---------------------------------------------------------------------------------

const std::vector<FieldView>& attributeFieldSpecs()
{
    static const std::vector<FieldView> specs
        = {{kChunkSizeField, nullptr, FieldType::kINT32, 1}, {kHasStatesField, nullptr, FieldType::kINT32, 1},
            {kSerializationField, nullptr, FieldType::kINT32, 1}, {kWorkspaceField, nullptr, FieldType::kINT64, 1}};
    return specs;
}

std::string parseAttributes(const FieldView* fields, int32_t nbFields, Attributes* out)
{
    Attributes attrs;
    if (nbFields < 0 || (nbFields > 0 && fields == nullptr))
    {
        return "HydraScan: malformed plugin field collection";
    }
    constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
    for (int32_t i = 0; i < nbFields; ++i)
    {
        const FieldView& f = fields[i];
        const std::string name = f.name != nullptr ? f.name : "";
        std::string e;
        if (name == kChunkSizeField)
        {
            e = readIntIn(f, 1, kInt32Max, "a positive int32", &attrs.chunkSize);
        }
        else if (name == kHasStatesField)
        {
            e = readIntIn(f, -1, 1, "0, 1 (or -1: from the input count)", &attrs.hasInitialStates);
        }
        else if (name == kSerializationField)
        {
            e = readIntIn(f, 1, kInt32Max, "a positive int32", &attrs.serializationVersion);
        }
        else if (name == kWorkspaceField)
        {
            int64_t v = 0;
            e = readInt(f, &v);
            if (e.empty() && v < -1)
            {
                e = std::string("HydraScan: attribute ") + kWorkspaceField
                    + " must be a byte count (or -1: not recorded), got " + std::to_string(v);
            }
            if (e.empty())
            {
                attrs.workspaceSize = v;
            }
        }
        else
        {
            // Strict: a misspelt attribute would otherwise silently fall back to a default.
            e = "HydraScan: unknown attribute '" + name
                + "' (known: chunk_size, has_initial_states; engines also carry serialization_version, "
                  "workspace_size)";
        }
        if (!e.empty())
        {
            return e;
        }
    }
    *out = attrs;
    return {};
}

std::string checkStatesAgree(const Attributes& attrs, int32_t nbInputs)
{
    if (attrs.hasInitialStates < 0 || attrs.hasInitialStates == (hasInitialStates(nbInputs) ? 1 : 0))
    {
        return {};
    }
    return "HydraScan: attribute has_initial_states=" + std::to_string(attrs.hasInitialStates) + " but the node has "
        + std::to_string(nbInputs) + " inputs (" + std::to_string(kNbInputsWithStates) + " with states, "
        + std::to_string(kNbInputsWithoutStates) + " without)";
}

std::string checkSerializationVersion(const Attributes& attrs)
{
    if (attrs.serializationVersion == kSerializationVersion && attrs.workspaceSize >= 0)
    {
        return {};
    }
    const std::string theirs = attrs.serializationVersion == 0
        ? std::string("an older library (no serialization_version field: version 1)")
        : "serialization version " + std::to_string(attrs.serializationVersion);
    if (attrs.serializationVersion != kSerializationVersion)
    {
        return "HydraScan: this engine was serialized by " + theirs
            + ", this plugin library has serialization version " + std::to_string(kSerializationVersion)
            + " (its CUDA kernel needs another workspace, which engines now record); rebuild the engine with this "
              "library";
    }
    return std::string("HydraScan: this engine does not record the workspace it was built with (") + kWorkspaceField
        + " missing or -1: the plugin was serialized without configurePlugin); rebuild the engine";
}

SerializedAttributes::SerializedAttributes(const Attributes& attrs)
    : mChunkSize(attrs.chunkSize)
    , mHasInitialStates(attrs.hasInitialStates)
    , mWorkspaceSize(attrs.workspaceSize)
{
    mFields.push_back(FieldView{kChunkSizeField, &mChunkSize, FieldType::kINT32, 1});
    mFields.push_back(FieldView{kHasStatesField, &mHasInitialStates, FieldType::kINT32, 1});
    mFields.push_back(FieldView{kSerializationField, &mSerializationVersion, FieldType::kINT32, 1});
    mFields.push_back(FieldView{kWorkspaceField, &mWorkspaceSize, FieldType::kINT64, 1});
}

void SerializedAttributes::update(const Attributes& attrs)
{
    mChunkSize = attrs.chunkSize;
    mHasInitialStates = attrs.hasInitialStates;
    mWorkspaceSize = attrs.workspaceSize;
}

std::string describe(const Attributes& attrs)
{
    return "chunk_size=" + std::to_string(attrs.chunkSize) + " has_initial_states="
        + std::to_string(attrs.hasInitialStates) + " workspace_size=" + std::to_string(attrs.workspaceSize);
}

// ---- Types and formats --------------------------------------------------------------------------

bool supportsCombination(int32_t pos, const IoDesc* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    if (inOut == nullptr || !checkIoCount(nbInputs, nbOutputs).empty() || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    const IoDesc& d = inOut[pos];
    if (!d.linear)
    {
        return false;
    }
    const IoType act = inOut[kInX].type; // valid for pos >= 1: position 0 was decided first
    if (pos == kInX)
    {
        return isFloatType(d.type);
    }
    if (pos == kInDtF)
    {
        return d.type == IoType::kFLOAT32 || d.type == act;
    }
    if (pos == kInDtB || pos == kInA || pos == kInDtBias)
    {
        return d.type == inOut[kInDtF].type;
    }
    if (pos >= kInBF && pos <= kInCB)
    {
        return d.type == act;
    }
    if (pos < nbInputs) // state_f0, state_b0
    {
        return d.type == IoType::kFLOAT32;
    }
    const int32_t out = pos - nbInputs;
    return out == kOutY ? d.type == act : d.type == IoType::kFLOAT32;
}

std::string outputTypes(const IoType* inputTypes, int32_t nbInputs, IoType* outputs, int32_t nbOutputs)
{
    const std::string e = checkIoCount(nbInputs, nbOutputs);
    if (!e.empty())
    {
        return e;
    }
    if (!isFloatType(inputTypes[kInX]))
    {
        return "HydraScan: x must be float32, float16 or bfloat16";
    }
    outputs[kOutY] = inputTypes[kInX];
    outputs[kOutStateF] = IoType::kFLOAT32;
    outputs[kOutStateB] = IoType::kFLOAT32;
    return {};
}

int toDtypeCode(IoType t)
{
    switch (t)
    {
    case IoType::kFLOAT32: return HM_FLOAT32;
    case IoType::kFLOAT16: return HM_FLOAT16;
    case IoType::kBFLOAT16: return HM_BFLOAT16;
    case IoType::kOTHER: break;
    }
    return -1;
}

// ---- Shapes -------------------------------------------------------------------------------------

int32_t expectedRank(int32_t input)
{
    switch (input)
    {
    case kInDtF:
    case kInDtB: return 3;
    case kInA:
    case kInDtBias: return 1;
    default: return 4; // x, B_*, C_*, states
    }
}

const std::vector<DimSource>& outputDimSources(int32_t output)
{
    static const std::vector<DimSource> y = {{kInX, 0}, {kInX, 1}, {kInX, 2}, {kInX, 3}};
    static const std::vector<DimSource> state = {{kInX, 0}, {kInX, 2}, {kInX, 3}, {kInBF, 3}};
    static const std::vector<DimSource> none;
    if (output == kOutY)
    {
        return y;
    }
    return output == kOutStateF || output == kOutStateB ? state : none;
}

std::string validateInputDims(const std::vector<Dims>& inputs, HmScanShape* shape)
{
    const int32_t nbInputs = static_cast<int32_t>(inputs.size());
    std::string e = checkIoCount(nbInputs, kNbOutputs);
    if (!e.empty())
    {
        return e;
    }
    std::ostringstream err;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (static_cast<int32_t>(inputs[i].size()) != expectedRank(i))
        {
            err << "HydraScan: input " << i << " (" << inputName(i) << ") must have rank " << expectedRank(i)
                << ", got rank " << inputs[i].size();
            return err.str();
        }
        for (int64_t d : inputs[i])
        {
            if (d < -1)
            {
                err << "HydraScan: input " << inputName(i) << " has invalid dimension " << d;
                return err.str();
            }
        }
    }

    int64_t value[6] = {-1, -1, -1, -1, -1, -1}; // B, L, H, P, G, N as in symbols()
    bool allKnown = true;
    const auto& syms = symbols();
    for (size_t s = 0; s < syms.size(); ++s)
    {
        const DimSource* first = nullptr;
        for (const DimSource& u : syms[s].uses)
        {
            if (u.input >= nbInputs)
            {
                continue; // absent optional state
            }
            const int64_t d = inputs[u.input][u.axis];
            if (d < 0)
            {
                continue;
            }
            if (first == nullptr)
            {
                first = &u;
                value[s] = d;
            }
            else if (d != value[s])
            {
                err << "HydraScan: dimension " << syms[s].name << " differs: " << inputName(first->input) << ".shape["
                    << first->axis << "]=" << value[s] << " but " << inputName(u.input) << ".shape[" << u.axis
                    << "]=" << d;
                return err.str();
            }
        }
        allKnown = allKnown && value[s] >= 0;
    }
    const int64_t H = value[2];
    const int64_t G = value[4];
    if (H > 0 && G > 0 && H % G != 0)
    {
        err << "HydraScan: heads H=" << H << " (x.shape[2]) must be divisible by groups G=" << G
            << " (B_f.shape[2])";
        return err.str();
    }
    if (allKnown)
    {
        const HmScanShape s{value[0], value[1], value[2], value[3], value[4], value[5]};
        e = validateShape(s);
        if (!e.empty())
        {
            return e;
        }
        if (shape != nullptr)
        {
            *shape = s;
        }
    }
    return {};
}

std::string computeOutputDims(const std::vector<Dims>& inputs, std::vector<Dims>* outputs)
{
    const std::string e = validateInputDims(inputs, nullptr);
    if (!e.empty())
    {
        return e;
    }
    outputs->assign(kNbOutputs, Dims{});
    for (int32_t o = 0; o < kNbOutputs; ++o)
    {
        for (const DimSource& src : outputDimSources(o))
        {
            (*outputs)[o].push_back(inputs[src.input][src.axis]);
        }
    }
    return {};
}

namespace
{

std::string shapeText(const HmScanShape& s)
{
    return "B=" + std::to_string(s.batch) + " L=" + std::to_string(s.length) + " H=" + std::to_string(s.heads)
        + " P=" + std::to_string(s.headdim) + " G=" + std::to_string(s.groups) + " N=" + std::to_string(s.dstate);
}

} // namespace

std::string planProfile(const Dims& xMaxDims, const Dims& bMaxDims, IoType xType, size_t* workspaceBytes)
{
    if (xMaxDims.size() != 4 || bMaxDims.size() != 4)
    {
        return "HydraScan: the profile's maximum shapes of x and B_f must have rank 4";
    }
    if (toDtypeCode(xType) < 0)
    {
        return "HydraScan: x must be float32, float16 or bfloat16";
    }
    for (const Dims* dims : {&xMaxDims, &bMaxDims})
    {
        for (int64_t d : *dims)
        {
            if (d < 0)
            {
                return "HydraScan: the profile's maximum shape has an unknown dimension; the workspace cannot be "
                       "sized";
            }
        }
    }
    const HmScanShape s{xMaxDims[0], xMaxDims[1], xMaxDims[2], xMaxDims[3], bMaxDims[2], bMaxDims[3]};
    const HmDType act = static_cast<HmDType>(toDtypeCode(xType));
    std::string e = validateShape(s);
    CudaPlan plan{};
    if (e.empty())
    {
        e = planCuda(s, act, &plan);
    }
    if (!e.empty())
    {
        return "HydraScan: the profile's maximum shape (" + shapeText(s) + ", " + dtypeName(act)
            + ") cannot be planned: " + e;
    }
    *workspaceBytes = cudaWorkspaceSize(s, act); // == plan.workspaceBytes, for every setting
    return {};
}

size_t workspaceSize(const Dims& xMaxDims, const Dims& bMaxDims, IoType yType)
{
    size_t bytes = 0;
    return planProfile(xMaxDims, bMaxDims, yType, &bytes).empty() ? bytes : 0;
}

int64_t recordWorkspace(int64_t recorded, size_t bytes)
{
    const int64_t b = bytes > static_cast<size_t>(std::numeric_limits<int64_t>::max())
        ? std::numeric_limits<int64_t>::max()
        : static_cast<int64_t>(bytes);
    return std::max(recorded, b);
}

std::string checkWorkspace(const HmScanShape& s, HmDType act, int64_t grantedBytes)
{
    if (grantedBytes < 0)
    {
        return "HydraScan: the workspace this engine was built with is unknown (neither configurePlugin ran nor "
               "an engine's workspace_size was read); rebuild the engine";
    }
    CudaPlan plan{};
    const std::string e = planCuda(s, act, &plan);
    if (!e.empty())
    {
        return e;
    }
    if (plan.workspaceBytes > static_cast<uint64_t>(grantedBytes))
    {
        return "HydraScan: this run (" + shapeText(s) + ", " + dtypeName(act) + ", "
            + std::to_string(plan.tilesPerChunk) + " tile(s) per state chunk) needs "
            + std::to_string(plan.workspaceBytes) + " bytes of workspace, the engine was built with "
            + std::to_string(grantedBytes)
            + "; rebuild the engine (with this library, for a profile that covers this shape)";
    }
    return {};
}

} // namespace plugin
} // namespace hydra_scan
} // namespace hieramamba
