// Unit tests of the TensorRT-independent HydraScan code: 16-bit conversions, shape/dtype validation,
// workspace size, the plugin's attribute, type and shape logic, and a small CPU-kernel check against
// a double-precision recurrence written here. Plain asserts, no framework: runs under CTest anywhere.
#include "../common/hmFloat16.h"
#include "../hydra_scan/hydraScanKernel.h"
#include "../hydra_scan/hydraScanPluginLogic.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace
{

using namespace hieramamba;
using namespace hieramamba::hydra_scan;
namespace logic = hieramamba::hydra_scan::plugin;

int gFailures = 0;
int gChecks = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        ++gChecks;                                                                                                     \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ++gFailures;                                                                                               \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                                \
        }                                                                                                              \
    } while (0)

#define CHECK_ERR(expr, needle)                                                                                        \
    do                                                                                                                 \
    {                                                                                                                  \
        const std::string _e = (expr);                                                                                 \
        ++gChecks;                                                                                                     \
        if (_e.empty() || _e.find(needle) == std::string::npos)                                                        \
        {                                                                                                              \
            ++gFailures;                                                                                               \
            std::printf("FAIL %s:%d: %s -> \"%s\" (expected to mention \"%s\")\n", __FILE__, __LINE__, #expr,          \
                _e.c_str(), needle);                                                                                   \
        }                                                                                                              \
    } while (0)

void testFloat16()
{
    // Every half / bf16 pattern survives float and back (NaNs stay NaN).
    int badHalf = 0;
    int badBf16 = 0;
    for (uint32_t b = 0; b < 65536; ++b)
    {
        const uint16_t h = static_cast<uint16_t>(b);
        const float f = halfToFloat(h);
        if (std::isnan(f) ? !std::isnan(halfToFloat(floatToHalf(f))) : floatToHalf(f) != h)
        {
            ++badHalf;
        }
        const float g = bf16ToFloat(h);
        if (std::isnan(g) ? !std::isnan(bf16ToFloat(floatToBf16(g))) : floatToBf16(g) != h)
        {
            ++badBf16;
        }
    }
    CHECK(badHalf == 0);
    CHECK(badBf16 == 0);
    CHECK(halfToFloat(0x3C00) == 1.0f);
    CHECK(halfToFloat(0x0001) == std::ldexp(1.0f, -24)); // smallest subnormal
    CHECK(halfToFloat(0x7BFF) == 65504.0f);
    // Round to nearest even at the ties.
    CHECK(floatToHalf(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
    CHECK(floatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
    CHECK(floatToHalf(65519.0f) == 0x7BFF);
    CHECK(floatToHalf(65520.0f) == 0x7C00);
    CHECK(floatToHalf(std::ldexp(1.0f, -25)) == 0x0000);
    CHECK(floatToHalf(std::ldexp(3.0f, -26)) == 0x0001);
    CHECK(floatToHalf(-2.0f) == 0xC000);
    CHECK(floatToBf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);
    CHECK(floatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);
}

void testShapeValidation()
{
    const HmScanShape ok{2, 17, 8, 4, 2, 16};
    CHECK(validateShape(ok).empty());
    CHECK(validateShape(HmScanShape{0, 0, 8, 4, 1, 16}).empty()); // empty batch/time is a no-op
    CHECK_ERR(validateShape(HmScanShape{2, 17, 6, 4, 4, 16}), "divisible");
    CHECK_ERR(validateShape(HmScanShape{-1, 17, 8, 4, 2, 16}), "batch");
    CHECK_ERR(validateShape(HmScanShape{2, 17, 8, 0, 2, 16}), "headdim");
    CHECK_ERR(validateShape(HmScanShape{1 << 30, 1 << 30, 1 << 20, 64, 1, 64}), "overflow");
    CHECK(validateDtypes(HM_FLOAT16, HM_FLOAT32).empty());
    CHECK(validateDtypes(HM_BFLOAT16, HM_BFLOAT16).empty());
    CHECK_ERR(validateDtypes(HM_FLOAT16, HM_BFLOAT16), "dt_f");
    CHECK_ERR(validateDtypes(7, HM_FLOAT32), "dtype");
    CHECK(validateCudaShape(ok, HM_FLOAT32).empty());
    CHECK_ERR(validateCudaShape(HmScanShape{1, 1, 1, 1, 1, 2048}, HM_FLOAT16), "dstate N=2048");
    CHECK_ERR(validateCudaShape(HmScanShape{1, 1, 1, 160, 1, 160}, HM_FLOAT32), "shared memory");

    // The CUDA plan: tensor cores for 16-bit x with P, N multiples of 16; the largest chunk whose
    // shared memory fits the budget; every P, N <= 128 fits for every dtype (the documented limit).
    CudaPlan plan{};
    CHECK(planCuda(HmScanShape{1, 130, 12, 64, 1, 64}, HM_FLOAT16, &plan).empty());
    CHECK(plan.tensorCores && plan.tile == 64 && plan.tilesPerChunk == 1 && plan.chunk == 64 && plan.numChunks == 3);
    CHECK(plan.outputSmem.total <= kCudaSharedMemoryBudget && plan.stateSmem.total <= kCudaSharedMemoryBudget);
    CHECK(planCuda(HmScanShape{1, 130, 12, 64, 1, 64}, HM_FLOAT32, &plan).empty());
    CHECK(!plan.tensorCores && plan.tile == 32 && plan.chunk == 32 && plan.numChunks == 5);
    // Two tiles per state chunk (the tuning knob): half the chunks, the same workspace (sized for one).
    const size_t oneTileWorkspace = plan.workspaceBytes;
    setenv(kTilesPerChunkEnv, "2", 1);
    CHECK(planCuda(HmScanShape{1, 130, 12, 64, 1, 64}, HM_FLOAT32, &plan).empty());
    CHECK(plan.tile == 32 && plan.tilesPerChunk == 2 && plan.chunk == 64 && plan.numChunks == 3);
    CHECK(plan.workspaceBytes == oneTileWorkspace);
    // The grid bound counts the output kernel's blocks: every tile of every chunk, so T = 4 tiles for
    // a 10-step sequence. 2^30 + 1 heads fit one block each, not four.
    const HmScanShape manyHeads{(int64_t{1} << 30) + 1, 10, 1, 4, 1, 8};
    setenv(kTilesPerChunkEnv, "4", 1);
    CHECK_ERR(planCuda(manyHeads, HM_FLOAT32, &plan), "grid limit");
    setenv(kTilesPerChunkEnv, "1", 1);
    CHECK(planCuda(manyHeads, HM_FLOAT32, &plan).empty());
    setenv(kTilesPerChunkEnv, "8", 1);
    CHECK_ERR(planCuda(HmScanShape{1, 130, 12, 64, 1, 64}, HM_FLOAT32, &plan), "must be 1, 2 or 4, got '8'");
    unsetenv(kTilesPerChunkEnv);
    CHECK(planCuda(HmScanShape{1, 130, 12, 64, 1, 24}, HM_BFLOAT16, &plan).empty());
    CHECK(!plan.tensorCores); // N = 24 is not a multiple of 16
    for (const char* tiles : {"1", "2", "4"})
    {
        setenv(kTilesPerChunkEnv, tiles, 1);
        for (HmDType act : {HM_FLOAT32, HM_FLOAT16, HM_BFLOAT16})
        {
            for (int64_t pn : {1, 15, 64, 100, 128})
            {
                CHECK(planCuda(HmScanShape{1, 10, 1, pn, 1, 128}, act, &plan).empty());
                CHECK(planCuda(HmScanShape{1, 10, 1, 128, 1, pn}, act, &plan).empty());
            }
        }
    }
    unsetenv(kTilesPerChunkEnv);
    // Every buffer of a carve-up starts 128-byte aligned (wmma needs 32) and none overlaps the next.
    CHECK(planCuda(HmScanShape{1, 10, 2, 48, 1, 80}, HM_FLOAT16, &plan).empty());
    const size_t offsets[] = {plan.outputSmem.x, plan.outputSmem.c, plan.outputSmem.b, plan.outputSmem.state,
        plan.outputSmem.g, plan.outputSmem.m, plan.outputSmem.y, plan.outputSmem.scan, plan.outputSmem.total};
    const size_t q = static_cast<size_t>(plan.tile);
    const size_t sizes[] = {q * 48 * 2, q * 80 * 2, q * 80 * 2, 48 * 80 * 2, q * q * 4, q * q * 2, q * 48 * 4, 3 * q * 4 + 16};
    for (int i = 0; i < 8; ++i)
    {
        CHECK(offsets[i] % 128 == 0 && offsets[i] + sizes[i] <= offsets[i + 1]);
    }

    // Workspace: fp32 per-chunk states and decays of both directions, each part rounded up to 256.
    const int64_t chunks = (17 + 63) / 64; // ok: P = 4, N = 16 fit 64-step chunks
    const size_t states = 2 * 2 * 8 * chunks * 4 * 16 * sizeof(float);
    const size_t decays = 2 * 2 * 8 * chunks * sizeof(float);
    CHECK(cudaWorkspaceSize(ok, HM_FLOAT32) == (states + 255) / 256 * 256 + (decays + 255) / 256 * 256);
    CHECK(cudaWorkspaceSize(ok, HM_FLOAT16) == cudaWorkspaceSize(ok, HM_FLOAT32));
    CHECK(cudaWorkspaceSize(HmScanShape{2, 0, 8, 4, 2, 16}, HM_FLOAT16) == 0);
    CHECK(cudaWorkspaceSize(HmScanShape{1, 1, 1, 160, 1, 160}, HM_FLOAT32) == 0); // no plan

    HmScanTensors t{};
    CHECK_ERR(validatePointers(ok, t), "'x'");
    CHECK(validatePointers(HmScanShape{0, 0, 8, 4, 1, 16}, HmScanTensors{}).find("'A'") != std::string::npos);
}

// The workspace is a function of shape and dtype only: every tiles-per-chunk setting's plan has the
// same layout and size, cudaWorkspaceSize's, which is T = 1's (the most chunks). A workspace sized
// at one setting (a TensorRT engine's build) therefore holds the plan of any other (its run).
void testWorkspaceIndependentOfTilesPerChunk()
{
    int mismatches = 0;
    int notOneTile = 0;
    for (HmDType act : {HM_FLOAT32, HM_FLOAT16, HM_BFLOAT16})
    {
        for (int64_t P = 1; P <= 128; ++P)
        {
            for (int64_t N = 1; N <= 128; ++N)
            {
                const HmScanShape s{1, 65536, 12, P, 1, N};
                const size_t ws = cudaWorkspaceSize(s, act);
                CudaPlan one{};
                if (!planCudaWithTiles(s, act, 1, &one).empty())
                {
                    ++mismatches;
                    continue;
                }
                // T = 1: one chunk per tile.
                const size_t perDir = static_cast<size_t>(12 * one.numChunks);
                const size_t expected = (2 * perDir * P * N * 4 + 255) / 256 * 256 + (2 * perDir * 4 + 255) / 256 * 256;
                notOneTile += ws == expected ? 0 : 1;
                for (int tiles : kCudaTilesPerChunkSettings)
                {
                    CudaPlan p{};
                    const bool ok = planCudaWithTiles(s, act, tiles, &p).empty();
                    mismatches += ok && p.workspaceBytes == ws && p.chunkDecaysOffset == one.chunkDecaysOffset
                            && p.numChunks <= one.numChunks
                        ? 0
                        : 1;
                }
            }
        }
    }
    CHECK(mismatches == 0);
    CHECK(notOneTile == 0);

    // Issue 17's shape: fp16, P = 64, N = 128, L = 65536, H = 12 drops to 32-step tiles at T = 4
    // (the plan of 64-step tiles no longer fits with 256-step chunks); its workspace stays T = 1's
    // 0.81 GB instead of doubling to 1.61 GB.
    const HmScanShape big{1, 65536, 12, 64, 1, 128};
    CudaPlan p1{}, p4{};
    CHECK(planCudaWithTiles(big, HM_FLOAT16, 1, &p1).empty() && p1.tile == 64 && p1.numChunks == 1024);
    CHECK(planCudaWithTiles(big, HM_FLOAT16, 4, &p4).empty() && p4.tile == 32 && p4.numChunks == 512);
    CHECK(p4.workspaceBytes == p1.workspaceBytes && p1.workspaceBytes == 805404672u);
    CHECK(cudaWorkspaceSize(big, HM_FLOAT16) == 805404672u);
    // cudaWorkspaceSize does not read the setting, not even an invalid one; planCuda does.
    setenv(kTilesPerChunkEnv, "4", 1);
    CHECK(planCuda(big, HM_FLOAT16, &p4).empty() && p4.tilesPerChunk == 4 && p4.workspaceBytes == 805404672u);
    setenv(kTilesPerChunkEnv, "3", 1);
    CHECK(cudaWorkspaceSize(big, HM_FLOAT16) == 805404672u);
    CHECK_ERR(planCuda(big, HM_FLOAT16, &p4), "got '3'");
    unsetenv(kTilesPerChunkEnv);
    CHECK_ERR(planCudaWithTiles(big, HM_FLOAT16, 3, &p4), "must be 1, 2 or 4, got 3");

}

void testAttributes()
{
    logic::Attributes a;
    CHECK(logic::parseAttributes(nullptr, 0, &a).empty());
    CHECK(a.chunkSize == 256 && a.hasInitialStates == -1);

    const int32_t c32 = 64;
    const int64_t c64 = 128;
    const float cf = 64.0f;
    const int32_t two = 2;
    const int32_t pair[2] = {1, 2};
    logic::FieldView f32{"chunk_size", &c32, logic::FieldType::kINT32, 1};
    CHECK(logic::parseAttributes(&f32, 1, &a).empty() && a.chunkSize == 64);
    logic::FieldView f64{"chunk_size", &c64, logic::FieldType::kINT64, 1};
    CHECK(logic::parseAttributes(&f64, 1, &a).empty() && a.chunkSize == 128);
    logic::FieldView bad{"chunk_size", &cf, logic::FieldType::kFLOAT32, 1};
    CHECK_ERR(logic::parseAttributes(&bad, 1, &a), "INT32");
    logic::FieldView badLen{"chunk_size", pair, logic::FieldType::kINT32, 2};
    CHECK_ERR(logic::parseAttributes(&badLen, 1, &a), "chunk_size");
    const int32_t zero = 0;
    logic::FieldView badVal{"chunk_size", &zero, logic::FieldType::kINT32, 1};
    CHECK_ERR(logic::parseAttributes(&badVal, 1, &a), "positive");
    logic::FieldView unknown{"chunksize", &c32, logic::FieldType::kINT32, 1};
    CHECK_ERR(logic::parseAttributes(&unknown, 1, &a), "unknown attribute 'chunksize'");
    logic::FieldView states{"has_initial_states", &two, logic::FieldType::kINT32, 1};
    CHECK_ERR(logic::parseAttributes(&states, 1, &a), "has_initial_states");

    // Serialization round trip, and update() keeps the serialized pointers valid.
    logic::Attributes in;
    in.chunkSize = 96;
    in.hasInitialStates = 1;
    logic::SerializedAttributes ser(in);
    const void* before = ser.fields()[0].data;
    logic::Attributes out;
    CHECK(logic::parseAttributes(ser.fields().data(), static_cast<int32_t>(ser.fields().size()), &out).empty());
    CHECK(out.chunkSize == 96 && out.hasInitialStates == 1 && out.workspaceSize == -1);
    in.hasInitialStates = 0;
    in.workspaceSize = int64_t{5} << 32; // > 2^32: the field is INT64
    ser.update(in);
    CHECK(ser.fields()[0].data == before);
    CHECK(ser.fields().size() == 4 && std::string(ser.fields()[3].name) == "workspace_size"
        && ser.fields()[3].type == logic::FieldType::kINT64);
    CHECK(logic::parseAttributes(ser.fields().data(), static_cast<int32_t>(ser.fields().size()), &out).empty());
    CHECK(out.hasInitialStates == 0 && out.workspaceSize == (int64_t{5} << 32));
    const int64_t negative = -2;
    logic::FieldView badWorkspace{"workspace_size", &negative, logic::FieldType::kINT64, 1};
    CHECK_ERR(logic::parseAttributes(&badWorkspace, 1, &a), "workspace_size");

    // Engines record the library's serialization version; at the runtime phase another (or none:
    // an engine of the sequential-kernel era) is refused, since its workspace was sized for another
    // kernel.
    CHECK(out.serializationVersion == logic::kSerializationVersion && logic::kSerializationVersion == 3);
    CHECK(logic::checkSerializationVersion(out).empty());
    // An engine of this version that does not record its workspace is refused too.
    logic::Attributes unrecorded = out;
    unrecorded.workspaceSize = -1;
    CHECK_ERR(logic::checkSerializationVersion(unrecorded), "does not record the workspace");
    CHECK(logic::parseAttributes(ser.fields().data(), 3, &unrecorded).empty()); // without workspace_size
    CHECK_ERR(logic::checkSerializationVersion(unrecorded), "workspace_size");
    // Version 2 engines (workspace sized at the build's tiles-per-chunk setting, not recorded).
    const int32_t two32 = 2;
    logic::FieldView v2{"serialization_version", &two32, logic::FieldType::kINT32, 1};
    CHECK(logic::parseAttributes(&v2, 1, &unrecorded).empty());
    CHECK_ERR(logic::checkSerializationVersion(unrecorded), "serialization version 2");
    logic::Attributes oldEngine;
    CHECK(logic::parseAttributes(ser.fields().data(), 2, &oldEngine).empty()); // chunk_size, has_initial_states only
    CHECK_ERR(logic::checkSerializationVersion(oldEngine), "older library");
    const int32_t future = logic::kSerializationVersion + 1;
    logic::FieldView newer{"serialization_version", &future, logic::FieldType::kINT32, 1};
    CHECK(logic::parseAttributes(&newer, 1, &oldEngine).empty());
    CHECK_ERR(logic::checkSerializationVersion(oldEngine), "rebuild the engine");
    const int32_t notAVersion = 0;
    logic::FieldView badVersion{"serialization_version", &notAVersion, logic::FieldType::kINT32, 1};
    CHECK_ERR(logic::parseAttributes(&badVersion, 1, &oldEngine), "serialization_version");

    // The advertised field names are exactly what the parser accepts.
    const auto& specs = logic::attributeFieldSpecs();
    CHECK(specs.size() == 4);
    for (const auto& s : specs)
    {
        const int32_t one = 1;
        const int64_t one64 = 1;
        logic::FieldView f{s.name, s.type == logic::FieldType::kINT64 ? static_cast<const void*>(&one64) : &one,
            s.type, s.length};
        CHECK(logic::parseAttributes(&f, 1, &out).empty());
    }

    logic::Attributes withStates;
    withStates.hasInitialStates = 1;
    CHECK(logic::checkStatesAgree(withStates, 11).empty());
    CHECK_ERR(logic::checkStatesAgree(withStates, 9), "has_initial_states=1");
    CHECK(logic::checkStatesAgree(logic::Attributes{}, 9).empty());
    CHECK(logic::checkIoCount(9, 3).empty() && logic::checkIoCount(11, 3).empty());
    CHECK_ERR(logic::checkIoCount(10, 3), "10");
    CHECK_ERR(logic::checkIoCount(9, 2), "outputs");
}

using logic::IoDesc;
using logic::IoType;

// Asks the decision table position by position, as TensorRT does.
bool acceptsAll(const std::vector<IoDesc>& io, int32_t nbInputs)
{
    for (int32_t pos = 0; pos < static_cast<int32_t>(io.size()); ++pos)
    {
        if (!logic::supportsCombination(pos, io.data(), nbInputs, 3))
        {
            return false;
        }
    }
    return true;
}

std::vector<IoDesc> combo(IoType act, IoType dt, int32_t nbInputs, IoType state = IoType::kFLOAT32)
{
    std::vector<IoDesc> io(static_cast<size_t>(nbInputs + 3), IoDesc{act, true});
    for (int i : {1, 2, 3, 4})
    {
        io[i].type = dt;
    }
    for (int32_t i = 9; i < nbInputs; ++i)
    {
        io[i].type = state;
    }
    io[nbInputs + 1].type = state;
    io[nbInputs + 2].type = state;
    return io;
}

void testFormats()
{
    const IoType floats[] = {IoType::kFLOAT32, IoType::kFLOAT16, IoType::kBFLOAT16};
    const IoType all[] = {IoType::kFLOAT32, IoType::kFLOAT16, IoType::kBFLOAT16, IoType::kOTHER};
    for (int32_t nb : {9, 11})
    {
        for (IoType act : all)
        {
            for (IoType dt : all)
            {
                const bool expected = act != IoType::kOTHER && (dt == IoType::kFLOAT32 || dt == act);
                CHECK(acceptsAll(combo(act, dt, nb), nb) == expected);
            }
        }
        for (IoType act : floats)
        {
            CHECK(!acceptsAll(combo(act, act, nb, IoType::kFLOAT16), nb)); // states are fp32 only
            auto io = combo(act, IoType::kFLOAT32, nb);
            io[nb].type = act == IoType::kFLOAT32 ? IoType::kFLOAT16 : IoType::kFLOAT32; // y must match x
            CHECK(!acceptsAll(io, nb));
            io = combo(act, IoType::kFLOAT32, nb);
            io[6].type = act == IoType::kFLOAT32 ? IoType::kBFLOAT16 : IoType::kFLOAT32; // C_f must match x
            CHECK(!acceptsAll(io, nb));
            io = combo(act, IoType::kFLOAT32, nb);
            io[3].type = act; // A must match dt_f
            CHECK(acceptsAll(io, nb) == (act == IoType::kFLOAT32));
            io = combo(act, IoType::kFLOAT32, nb);
            io[5].linear = false;
            CHECK(!acceptsAll(io, nb));
        }
    }
    auto io = combo(IoType::kFLOAT32, IoType::kFLOAT32, 9);
    CHECK(!logic::supportsCombination(-1, io.data(), 9, 3));
    CHECK(!logic::supportsCombination(12, io.data(), 9, 3));
    CHECK(!logic::supportsCombination(0, io.data(), 10, 3));

    IoType in[11];
    IoType out[3];
    for (auto& t : in)
    {
        t = IoType::kFLOAT32;
    }
    in[0] = IoType::kBFLOAT16;
    CHECK(logic::outputTypes(in, 11, out, 3).empty());
    CHECK(out[0] == IoType::kBFLOAT16 && out[1] == IoType::kFLOAT32 && out[2] == IoType::kFLOAT32);
    in[0] = IoType::kOTHER;
    CHECK_ERR(logic::outputTypes(in, 9, out, 3), "x must be");
    CHECK(logic::toDtypeCode(IoType::kFLOAT16) == HM_FLOAT16 && logic::toDtypeCode(IoType::kOTHER) == -1);
}

std::vector<logic::Dims> dimsFor(int64_t B, int64_t L, int64_t H, int64_t P, int64_t G, int64_t N, bool states)
{
    std::vector<logic::Dims> d = {{B, L, H, P}, {B, L, H}, {B, L, H}, {H}, {H}, {B, L, G, N}, {B, L, G, N},
        {B, L, G, N}, {B, L, G, N}};
    if (states)
    {
        d.push_back({B, H, P, N});
        d.push_back({B, H, P, N});
    }
    return d;
}

void testShapes()
{
    HmScanShape s{};
    CHECK(logic::validateInputDims(dimsFor(2, 300, 8, 64, 1, 64, false), &s).empty());
    CHECK(s.batch == 2 && s.length == 300 && s.heads == 8 && s.headdim == 64 && s.groups == 1 && s.dstate == 64);
    CHECK(logic::validateInputDims(dimsFor(2, 300, 8, 64, 4, 16, true), &s).empty() && s.groups == 4);

    auto d = dimsFor(2, 300, 8, 64, 1, 64, true);
    d[6][1] = 299;
    CHECK_ERR(logic::validateInputDims(d, nullptr), "L differs");
    d = dimsFor(2, 300, 8, 64, 1, 64, true);
    d[10][3] = 32;
    CHECK_ERR(logic::validateInputDims(d, nullptr), "state_b0");
    d = dimsFor(2, 300, 8, 64, 1, 64, false);
    d[3] = {9};
    CHECK_ERR(logic::validateInputDims(d, nullptr), "H differs");
    CHECK_ERR(logic::validateInputDims(dimsFor(2, 300, 6, 64, 4, 16, false), nullptr), "divisible");
    d = dimsFor(2, 300, 8, 64, 1, 64, false);
    d[1] = {2, 300};
    CHECK_ERR(logic::validateInputDims(d, nullptr), "rank 3");
    d = dimsFor(2, 300, 8, 64, 1, 64, false);
    d.pop_back();
    CHECK_ERR(logic::validateInputDims(d, nullptr), "inputs");

    // Build time: dynamic batch and time are -1 and must not be compared.
    d = dimsFor(-1, -1, 8, 64, 1, 64, true);
    d[0][0] = 3; // one known batch is fine as long as no other known batch disagrees
    s = HmScanShape{};
    CHECK(logic::validateInputDims(d, &s).empty());
    CHECK(s.heads == 0); // not filled: not every dimension is known

    std::vector<logic::Dims> out;
    CHECK(logic::computeOutputDims(dimsFor(2, -1, 8, 64, 2, 16, false), &out).empty());
    CHECK(out.size() == 3);
    CHECK((out[0] == logic::Dims{2, -1, 8, 64}));
    CHECK((out[1] == logic::Dims{2, 8, 64, 16}));
    CHECK((out[2] == logic::Dims{2, 8, 64, 16}));

    // 300 steps in 64-step chunks (fp16, P = 64, N = 16 on tensor cores): 5 chunks of P*N fp32 states
    // and one decay per direction, batch and head.
    const size_t wsStates = 2u * 2 * 8 * 5 * 64 * 16 * 4;
    const size_t wsDecays = (2u * 2 * 8 * 5 * 4 + 255) / 256 * 256;
    CHECK(logic::workspaceSize({2, 300, 8, 64}, {2, 300, 2, 16}, IoType::kFLOAT16) == wsStates + wsDecays);
    CHECK(logic::workspaceSize({2, -1, 8, 64}, {2, -1, 2, 16}, IoType::kFLOAT16) == 0);
    CHECK(logic::workspaceSize({2, 300, 8, 64}, {2, 300, 2, -1}, IoType::kFLOAT16) == 0);
}

// configurePlugin plans the profile's largest shape (and fails when it cannot), the engine records
// the largest workspace it was configured for, and enqueue checks each run's plan against it.
void testWorkspaceDecisions()
{
    size_t bytes = 1;
    CHECK(logic::planProfile({2, 300, 8, 64}, {2, 300, 2, 16}, IoType::kFLOAT16, &bytes).empty());
    CHECK(bytes == logic::workspaceSize({2, 300, 8, 64}, {2, 300, 2, 16}, IoType::kFLOAT16) && bytes > 0);
    CHECK(logic::planProfile({2, 0, 8, 64}, {2, 0, 2, 16}, IoType::kFLOAT32, &bytes).empty() && bytes == 0);
    CHECK_ERR(logic::planProfile({2, -1, 8, 64}, {2, -1, 2, 16}, IoType::kFLOAT16, &bytes), "unknown dimension");
    CHECK_ERR(logic::planProfile({1, 10, 1, 160}, {1, 10, 1, 160}, IoType::kFLOAT32, &bytes), "cannot be planned");
    CHECK_ERR(logic::planProfile({1, 10, 1, 160}, {1, 10, 1, 160}, IoType::kFLOAT32, &bytes), "shared memory");
    CHECK_ERR(logic::planProfile({1, 10, 6, 8}, {1, 10, 4, 16}, IoType::kFLOAT32, &bytes), "divisible");
    CHECK_ERR(logic::planProfile({1, 10, 2, 8}, {1, 10, 1, 16}, IoType::kOTHER, &bytes), "x must be");
    CHECK_ERR(logic::planProfile({1, 10, 2}, {1, 10, 1, 16}, IoType::kFLOAT32, &bytes), "rank 4");
    CHECK(logic::workspaceSize({1, 10, 1, 160}, {1, 10, 1, 160}, IoType::kFLOAT32) == 0);
    setenv(kTilesPerChunkEnv, "5", 1);
    CHECK_ERR(logic::planProfile({2, 300, 8, 64}, {2, 300, 2, 16}, IoType::kFLOAT16, &bytes), kTilesPerChunkEnv);
    unsetenv(kTilesPerChunkEnv);

    CHECK(logic::recordWorkspace(-1, 0) == 0);
    CHECK(logic::recordWorkspace(-1, 4096) == 4096);
    CHECK(logic::recordWorkspace(8192, 4096) == 8192);

    // An engine built at T = 1 for fp16 P = 64, N = 128 (the tile drops at T = 4) runs at T = 2 and 4.
    const HmScanShape s{1, 1000, 4, 64, 1, 128};
    size_t granted = 0;
    CHECK(logic::planProfile({1, 1000, 4, 64}, {1, 1000, 1, 128}, IoType::kFLOAT16, &granted).empty());
    for (const char* tiles : {"1", "2", "4"})
    {
        setenv(kTilesPerChunkEnv, tiles, 1);
        CHECK(logic::checkWorkspace(s, HM_FLOAT16, static_cast<int64_t>(granted)).empty());
        CHECK(logic::checkWorkspace(HmScanShape{1, 500, 4, 64, 1, 128}, HM_FLOAT16, static_cast<int64_t>(granted))
                  .empty());
    }
    unsetenv(kTilesPerChunkEnv);
    // Refused, with both sizes and the advice, instead of writing past the workspace: less than the
    // plan needs (another library's sizing), a shape above the profile, nothing recorded, a bad setting.
    CHECK_ERR(logic::checkWorkspace(s, HM_FLOAT16, static_cast<int64_t>(granted) - 256), "rebuild the engine");
    CHECK_ERR(logic::checkWorkspace(s, HM_FLOAT16, static_cast<int64_t>(granted) - 256),
        std::to_string(granted).c_str());
    CHECK_ERR(logic::checkWorkspace(HmScanShape{1, 2000, 4, 64, 1, 128}, HM_FLOAT16, static_cast<int64_t>(granted)),
        "needs");
    CHECK_ERR(logic::checkWorkspace(s, HM_FLOAT16, -1), "unknown");
    CHECK(logic::checkWorkspace(HmScanShape{0, 1000, 4, 64, 1, 128}, HM_FLOAT16, 0).empty()); // B = 0: nothing
    setenv(kTilesPerChunkEnv, "x", 1);
    CHECK_ERR(logic::checkWorkspace(s, HM_FLOAT16, static_cast<int64_t>(granted)), "got 'x'");
    unsetenv(kTilesPerChunkEnv);
}

// Double-precision recurrence, independent of the kernel's code path.
void naiveScan(const HmScanShape& s, const std::vector<float>& x, const std::vector<float>& dtf,
    const std::vector<float>& dtb, const std::vector<float>& A, const std::vector<float>& bias,
    const std::vector<float>& Bf, const std::vector<float>& Cf, const std::vector<float>& Bb,
    const std::vector<float>& Cb, const std::vector<float>& sf0, const std::vector<float>& sb0, std::vector<double>& y,
    std::vector<double>& sf, std::vector<double>& sb)
{
    const int64_t B = s.batch, L = s.length, H = s.heads, P = s.headdim, G = s.groups, N = s.dstate;
    y.assign(static_cast<size_t>(B * L * H * P), 0.0);
    sf.assign(static_cast<size_t>(B * H * P * N), 0.0);
    sb = sf;
    auto softplus = [](double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); };
    for (int64_t b = 0; b < B; ++b)
    {
        for (int64_t h = 0; h < H; ++h)
        {
            const int64_t g = h / (H / G);
            for (int dir = 0; dir < 2; ++dir)
            {
                const auto& dt = dir == 0 ? dtf : dtb;
                const auto& Bm = dir == 0 ? Bf : Bb;
                const auto& Cm = dir == 0 ? Cf : Cb;
                const auto& init = dir == 0 ? sf0 : sb0;
                std::vector<double> S(init.begin() + (b * H + h) * P * N, init.begin() + (b * H + h + 1) * P * N);
                for (int64_t k = 0; k < L; ++k)
                {
                    const int64_t t = dir == 0 ? k : L - 1 - k;
                    const double delta = softplus(static_cast<double>(dt[(b * L + t) * H + h]) + bias[h]);
                    const double a = std::exp(delta * A[h]);
                    for (int64_t p = 0; p < P; ++p)
                    {
                        double acc = 0.0;
                        for (int64_t n = 0; n < N; ++n)
                        {
                            double& v = S[p * N + n];
                            v = a * v + delta * x[((b * L + t) * H + h) * P + p] * Bm[((b * L + t) * G + g) * N + n];
                            acc += v * Cm[((b * L + t) * G + g) * N + n];
                        }
                        const int64_t tOut = dir == 0 ? t + 1 : t - 1;
                        if (tOut >= 0 && tOut < L)
                        {
                            y[((b * L + tOut) * H + h) * P + p] += acc;
                        }
                    }
                }
                auto& dst = dir == 0 ? sf : sb;
                std::copy(S.begin(), S.end(), dst.begin() + (b * H + h) * P * N);
            }
        }
    }
}

double maxRelErr(const std::vector<float>& got, const std::vector<double>& want)
{
    double scale = 0.0, err = 0.0;
    for (size_t i = 0; i < want.size(); ++i)
    {
        scale = std::max(scale, std::fabs(want[i]));
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
    return scale > 0.0 ? err / scale : err;
}

void testCpuKernel()
{
    const HmScanShape s{2, 23, 4, 3, 2, 5};
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto randn = [&](int64_t n) {
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& e : v)
        {
            e = normal(rng);
        }
        return v;
    };
    auto x = randn(numel(s, "x")), dtf = randn(numel(s, "dt_f")), dtb = randn(numel(s, "dt_b"));
    auto Bf = randn(numel(s, "B_f")), Cf = randn(numel(s, "C_f")), Bb = randn(numel(s, "B_b")),
         Cb = randn(numel(s, "C_b"));
    auto sf0 = randn(numel(s, "state_f0")), sb0 = randn(numel(s, "state_b0"));
    std::vector<float> A = {-0.5f, -1.0f, -2.0f, -4.0f}, bias = {0.1f, -1.0f, 0.5f, 25.0f}; // 25: softplus identity
    std::vector<float> y(static_cast<size_t>(numel(s, "y"))), sf(sf0.size()), sb(sb0.size());
    HmScanTensors t{x.data(), dtf.data(), dtb.data(), A.data(), bias.data(), Bf.data(), Cf.data(), Bb.data(),
        Cb.data(), sf0.data(), sb0.data(), y.data(), sf.data(), sb.data()};
    for (int threads : {1, 3})
    {
        CHECK(runCpu(s, HM_FLOAT32, HM_FLOAT32, t, threads).empty());
        std::vector<double> yRef, sfRef, sbRef;
        naiveScan(s, x, dtf, dtb, A, bias, Bf, Cf, Bb, Cb, sf0, sb0, yRef, sfRef, sbRef);
        CHECK(maxRelErr(y, yRef) < 1e-5);
        CHECK(maxRelErr(sf, sfRef) < 1e-5);
        CHECK(maxRelErr(sb, sbRef) < 1e-5);
    }

    // L = 0: nothing scanned, the final states are the initial states.
    const HmScanShape empty{2, 0, 4, 3, 2, 5};
    HmScanTensors te = t;
    CHECK(runCpu(empty, HM_FLOAT32, HM_FLOAT32, te, 2).empty());
    CHECK(sf == sf0 && sb == sb0);

    // L = 1: both shifted outputs are empty, y = 0.
    const HmScanShape one{2, 1, 4, 3, 2, 5};
    std::fill(y.begin(), y.end(), 1.0f);
    CHECK(runCpu(one, HM_FLOAT32, HM_FLOAT32, t, 1).empty());
    bool zero = true;
    for (int64_t i = 0; i < numel(one, "y"); ++i)
    {
        zero = zero && y[static_cast<size_t>(i)] == 0.0f;
    }
    CHECK(zero);

    HmScanTensors missing = t;
    missing.C_b = nullptr;
    CHECK_ERR(runCpu(s, HM_FLOAT32, HM_FLOAT32, missing, 1), "C_b");
    CHECK_ERR(runCpu(HmScanShape{2, 23, 4, 3, 3, 5}, HM_FLOAT32, HM_FLOAT32, t, 1), "divisible");
}

} // namespace

int main()
{
    testFloat16();
    testShapeValidation();
    testWorkspaceIndependentOfTilesPerChunk();
    testAttributes();
    testFormats();
    testShapes();
    testWorkspaceDecisions();
    testCpuKernel();
    std::printf("hydraScanLogicTest: %d checks, %d failures (CUDA kernel compiled in: %s)\n", gChecks, gFailures,
        cudaCompiled() ? "yes" : "no");
    return gFailures == 0 ? 0 : 1;
}
