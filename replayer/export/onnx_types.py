"""tracefmt logical dtypes as ONNX element types."""

from __future__ import annotations

from onnx import TensorProto

from tracefmt.dtypes import DType

ONNX_TYPE: dict[DType, int] = {
    DType.BOOL: TensorProto.BOOL,
    DType.UINT8: TensorProto.UINT8,
    DType.INT8: TensorProto.INT8,
    DType.INT16: TensorProto.INT16,
    DType.INT32: TensorProto.INT32,
    DType.INT64: TensorProto.INT64,
    DType.UINT16: TensorProto.UINT16,
    DType.UINT32: TensorProto.UINT32,
    DType.UINT64: TensorProto.UINT64,
    DType.FLOAT16: TensorProto.FLOAT16,
    DType.BFLOAT16: TensorProto.BFLOAT16,
    DType.FLOAT32: TensorProto.FLOAT,
    DType.FLOAT64: TensorProto.DOUBLE,
    DType.COMPLEX64: TensorProto.COMPLEX64,
    DType.COMPLEX128: TensorProto.COMPLEX128,
    DType.FLOAT8_E4M3FN: TensorProto.FLOAT8E4M3FN,
    DType.FLOAT8_E4M3FNUZ: TensorProto.FLOAT8E4M3FNUZ,
    DType.FLOAT8_E5M2: TensorProto.FLOAT8E5M2,
    DType.FLOAT8_E5M2FNUZ: TensorProto.FLOAT8E5M2FNUZ,
    DType.FLOAT8_E8M0FNU: TensorProto.FLOAT8E8M0,
    # Two float4 values per byte: shown as the bytes torch stores.
    DType.FLOAT4_E2M1FN_X2: TensorProto.UINT8,
}


def onnx_type(dtype: DType) -> int:
    """The ONNX element type of a logical dtype."""
    return ONNX_TYPE[dtype]
