//! A streaming reader of the few parts of an ONNX file (`ModelProto`,
//! onnx.proto) that describe a model without running it: the
//! `metadata_props` and the graph's inputs and outputs.
//!
//! ONNX Runtime parses the whole file and loads every weight to answer the
//! same questions. This reader seeks past node lists and tensor data and
//! never opens an external-data file, so a model with gigabytes of weights
//! is read in milliseconds and a few kilobytes of memory.
//!
//! Protobuf wire format: each field is a varint key (field number << 3 |
//! wire type) followed by a varint (type 0), 8 bytes (1), a varint length
//! and that many bytes (2), or 4 bytes (5). Every length is checked against
//! what is left of its parent message, and so of the file: a corrupt file is
//! an error, never a panic nor a large allocation.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use ort::value::TensorElementType;

use crate::graph::{GraphDim, GraphSignature, GraphValue, GraphValueType};

/// The longest string kept (a name, a metadata value); a longer one is
/// refused rather than allocated.
const MAX_STRING: u64 = 16 << 20;

/// Field numbers of onnx.proto, per message.
mod field {
    pub const MODEL_GRAPH: u32 = 7;
    pub const MODEL_METADATA_PROPS: u32 = 14;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
    pub const GRAPH_NODE: u32 = 1;
    pub const GRAPH_INITIALIZER: u32 = 5;
    pub const NODE_INPUT: u32 = 1;
    pub const NODE_OUTPUT: u32 = 2;
    pub const NODE_OP_TYPE: u32 = 4;
    pub const NODE_DOMAIN: u32 = 7;
    pub const NODE_ATTRIBUTE: u32 = 5;
    pub const ATTRIBUTE_T: u32 = 5;
    pub const ATTRIBUTE_G: u32 = 6;
    pub const ATTRIBUTE_TENSORS: u32 = 10;
    pub const ATTRIBUTE_GRAPHS: u32 = 11;
    pub const GRAPH_INPUT: u32 = 11;
    pub const GRAPH_OUTPUT: u32 = 12;
    pub const GRAPH_SPARSE_INITIALIZER: u32 = 15;
    pub const SPARSE_TENSOR_VALUES: u32 = 1;
    pub const TENSOR_DIMS: u32 = 1;
    pub const TENSOR_DATA_TYPE: u32 = 2;
    pub const TENSOR_NAME: u32 = 8;
    pub const TENSOR_EXTERNAL_DATA: u32 = 13;
    pub const VALUE_INFO_NAME: u32 = 1;
    pub const VALUE_INFO_TYPE: u32 = 2;
    pub const TYPE_TENSOR: u32 = 1;
    pub const TYPE_SEQUENCE: u32 = 4;
    pub const TYPE_MAP: u32 = 5;
    pub const TYPE_SPARSE_TENSOR: u32 = 8;
    pub const TYPE_OPTIONAL: u32 = 9;
    pub const TENSOR_TYPE_ELEM_TYPE: u32 = 1;
    pub const TENSOR_TYPE_SHAPE: u32 = 2;
    pub const SHAPE_DIM: u32 = 1;
    pub const DIM_VALUE: u32 = 1;
    pub const DIM_PARAM: u32 = 2;
}

/// What an ONNX file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OnnxHeader {
    /// `metadata_props`; a key given twice keeps its last value.
    pub metadata: HashMap<String, String>,
    /// Keys of `metadata_props` given more than once.
    pub repeated_keys: Vec<String>,
    pub signature: GraphSignature,
    /// For each graph output whose values a scoring operator of the
    /// default domain (`Softmax`, `LogSoftmax`, `Sigmoid`) computed, moved,
    /// cut, joined or rescaled by constants after it: that operator.
    pub output_activations: HashMap<String, String>,
    /// The files the initializers' data lies in (`external_data`
    /// `location`, relative to the model file's directory).
    pub external_files: std::collections::BTreeSet<String>,
    /// Each initializer whose data lies in one of those files.
    pub external_tensors: Vec<ExternalTensor>,
}

/// Where an initializer's data lies outside the model file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExternalTensor {
    pub name: String,
    /// The file, relative to the model file's directory.
    pub location: String,
    pub offset: u64,
    /// Its `length`, else its elements × their size (None for a type of
    /// no fixed size).
    pub length: Option<u64>,
    /// An `offset` or `length` that is no byte count (`-1`), said so.
    pub malformed: Option<String>,
}

/// Operators that turn scores into probabilities: an output computed by
/// one is not logits.
const SCORING_OPS: [&str; 4] = ["Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid"];

/// Operators whose output holds values of their first input, moved,
/// cut, cast, bounded or mapped one by one, never combined with anything
/// learned: a probability behind them is still one (a softmax sliced to
/// two columns, clipped to [0, 1]), or its negative log (LogSoftmax then
/// Neg), which the node's softmax would turn into the wrong class.
const VALUE_KEEPING_OPS: [&str; 22] = [
    "Identity",
    "Cast",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Transpose",
    "Slice",
    "Gather",
    "GatherElements",
    "Clip",
    "Expand",
    "Split",
    "Neg",
    "Log",
    "Exp",
    "Abs",
    "Relu",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
];

/// Arithmetic that, with every other operand a constant, only rescales or
/// shifts its input (a softmax × 100 is a percentage).
const CONSTANT_ARITHMETIC_OPS: [&str; 4] = ["Mul", "Div", "Add", "Sub"];

/// Why a file cannot be read as ONNX: what, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtoError {
    pub offset: u64,
    pub problem: String,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.problem, self.offset)
    }
}

fn fail<T>(offset: u64, problem: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError {
        offset,
        problem: problem.into(),
    })
}

/// Reads the metadata and the graph signature of the ONNX file `path`.
pub(crate) fn read_onnx_header(path: &Path) -> Result<OnnxHeader, ProtoError> {
    let file = File::open(path).or_else(|e| fail(0, format!("cannot open it: {e}")))?;
    let len = file
        .metadata()
        .or_else(|e| fail(0, format!("cannot read it: {e}")))?
        .len();
    read_model(&mut Walker::new(BufReader::new(file)), len)
}

/// The payload of one field, after its key.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Varint,
    Fixed(u64),
    /// Length-delimited: the absolute offset where it ends.
    Bytes {
        end: u64,
    },
}

/// A cursor over protobuf bytes that knows its offset in the file.
struct Walker<R> {
    r: R,
    pos: u64,
    /// Subgraphs the walk is inside (`If`, `Loop`, `Scan` bodies).
    depth: usize,
}

/// The deepest subgraph nesting read (a file of a few bytes per level
/// nested a million deep would exhaust the stack).
const MAX_SUBGRAPH_DEPTH: usize = 64;

impl<R: Read + Seek> Walker<R> {
    fn new(r: R) -> Self {
        Walker {
            r,
            pos: 0,
            depth: 0,
        }
    }

    fn byte(&mut self, end: u64) -> Result<u8, ProtoError> {
        if self.pos >= end {
            return fail(self.pos, "a value runs past the end of its message");
        }
        let mut b = [0u8; 1];
        self.r
            .read_exact(&mut b)
            .or_else(|e| fail(self.pos, format!("cannot read: {e}")))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> Result<u64, ProtoError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte(end)?;
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        fail(start, "a varint longer than 64 bits")
    }

    /// The next field of a message ending at `end`, or None at its end.
    fn next_field(&mut self, end: u64) -> Result<Option<(u32, Wire)>, ProtoError> {
        if self.pos >= end {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint(end)?;
        let number = match u32::try_from(key >> 3) {
            Ok(n) if n > 0 && n < (1 << 29) => n,
            _ => return fail(at, format!("invalid field number {}", key >> 3)),
        };
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed(8),
            2 => {
                let len = self.varint(end)?;
                let left = end - self.pos;
                if len > left {
                    let problem = format!("field {number} claims {len} bytes, {left} are left");
                    return fail(at, format!("{problem} (a truncated file?)"));
                }
                Wire::Bytes {
                    end: self.pos + len,
                }
            }
            5 => Wire::Fixed(4),
            // 3 and 4 are protobuf groups, which ONNX never writes.
            t => return fail(at, format!("field {number} has wire type {t}")),
        };
        Ok(Some((number, wire)))
    }

    fn skip(&mut self, wire: Wire, end: u64) -> Result<(), ProtoError> {
        match wire {
            Wire::Varint => self.varint(end).map(|_| ()),
            Wire::Fixed(n) => {
                if end - self.pos < n {
                    return fail(self.pos, "a value runs past the end of its message");
                }
                self.seek_to(self.pos + n)
            }
            Wire::Bytes { end: stop } => self.seek_to(stop),
        }
    }

    /// Moves forward to `target` (within the file: every caller checked it).
    fn seek_to(&mut self, target: u64) -> Result<(), ProtoError> {
        let delta = i64::try_from(target - self.pos)
            .or_else(|_| fail(self.pos, "a length beyond any file"))?;
        self.r
            .seek_relative(delta)
            .or_else(|e| fail(self.pos, format!("cannot seek: {e}")))?;
        self.pos = target;
        Ok(())
    }

    fn string(&mut self, stop: u64) -> Result<String, ProtoError> {
        let len = stop - self.pos;
        if len > MAX_STRING {
            return fail(
                self.pos,
                format!("a string of {len} bytes (at most {MAX_STRING} are read)"),
            );
        }
        let mut buf = Vec::new();
        (&mut self.r)
            .take(len)
            .read_to_end(&mut buf)
            .or_else(|e| fail(self.pos, format!("cannot read: {e}")))?;
        if buf.len() as u64 != len {
            return fail(self.pos, "the file ends inside a string");
        }
        self.pos = stop;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// The end of a length-delimited field, or an error naming the field.
fn bytes_end(wire: Wire, what: &str, at: u64) -> Result<u64, ProtoError> {
    match wire {
        Wire::Bytes { end } => Ok(end),
        other => fail(at, format!("{what} is not length-delimited ({other:?})")),
    }
}

fn varint_field<R: Read + Seek>(
    w: &mut Walker<R>,
    wire: Wire,
    what: &str,
    end: u64,
) -> Result<u64, ProtoError> {
    match wire {
        Wire::Varint => w.varint(end),
        other => fail(w.pos, format!("{what} is not a varint ({other:?})")),
    }
}

fn string_field<R: Read + Seek>(
    w: &mut Walker<R>,
    wire: Wire,
    what: &str,
) -> Result<String, ProtoError> {
    let stop = bytes_end(wire, what, w.pos)?;
    w.string(stop)
}

/// The parts of a GraphProto read so far (protobuf merges a message given
/// twice, so a second `graph` field adds to the first).
#[derive(Default)]
struct GraphParts {
    inputs: Vec<GraphValue>,
    outputs: Vec<GraphValue>,
    initializers: HashSet<String>,
    /// Each node output's producer: (op type, inputs); default domain
    /// only (a custom domain's `Softmax` is another operator).
    producers: HashMap<String, (String, Vec<String>)>,
    external_files: std::collections::BTreeSet<String>,
    external_tensors: Vec<ExternalTensor>,
}

impl GraphParts {
    fn add_initializer(&mut self, name: String, external: Option<ExternalTensor>) {
        if let Some(t) = external {
            self.add_external(t);
        }
        self.initializers.insert(name);
    }

    /// A tensor whose data lies in another file (an initializer's, a
    /// subgraph's, a constant's).
    fn add_external(&mut self, t: ExternalTensor) {
        self.external_files.insert(t.location.clone());
        self.external_tensors.push(t);
    }

    /// The scoring operator whose values `output` holds, if any: looking
    /// back through operators that keep values (`VALUE_KEEPING_OPS`),
    /// arithmetic with constants, and every input of a `Concat` (per-class
    /// sigmoids joined into one output).
    fn activation_of(&self, output: &str) -> Option<String> {
        let mut seen = HashSet::new();
        let mut todo = vec![output];
        // `seen` bounds the walk: a malformed graph may loop
        while let Some(name) = todo.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some((op, inputs)) = self.producers.get(name) else {
                continue;
            };
            let op = op.as_str();
            if SCORING_OPS.contains(&op) {
                return Some(op.to_string());
            }
            if VALUE_KEEPING_OPS.contains(&op) {
                todo.extend(inputs.first().map(String::as_str));
            } else if op == "Concat" {
                todo.extend(inputs.iter().map(String::as_str));
            } else if CONSTANT_ARITHMETIC_OPS.contains(&op) {
                let mut varying = inputs.iter().filter(|i| !self.is_constant(i));
                if let (Some(only), None) = (varying.next(), varying.next()) {
                    todo.push(only);
                }
            }
        }
        None
    }

    /// An initializer, or a `Constant` node's output.
    fn is_constant(&self, name: &str) -> bool {
        self.initializers.contains(name)
            || matches!(self.producers.get(name), Some((op, _)) if op == "Constant")
    }
}

fn read_model<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<OnnxHeader, ProtoError> {
    let mut metadata = HashMap::new();
    let mut repeated_keys = Vec::new();
    let mut graph: Option<GraphParts> = None;
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::MODEL_GRAPH => {
                let stop = bytes_end(wire, "ModelProto.graph", w.pos)?;
                read_graph(w, stop, graph.get_or_insert_with(GraphParts::default))?;
            }
            field::MODEL_METADATA_PROPS => {
                let stop = bytes_end(wire, "ModelProto.metadata_props", w.pos)?;
                let (key, value) = read_entry(w, stop)?;
                if metadata.insert(key.clone(), value).is_some() {
                    repeated_keys.push(key);
                }
            }
            _ => w.skip(wire, end)?,
        }
    }
    let Some(graph) = graph else {
        return fail(end, "no graph: not an ONNX model");
    };
    let output_activations = graph
        .outputs
        .iter()
        .filter_map(|o| Some((o.name.clone(), graph.activation_of(&o.name)?)))
        .collect();
    // Older IR versions list the initializers among the graph inputs too;
    // ONNX Runtime does not count them as inputs, nor do we.
    let inputs = graph
        .inputs
        .into_iter()
        .filter(|v| !graph.initializers.contains(&v.name))
        .collect();
    Ok(OnnxHeader {
        metadata,
        repeated_keys,
        signature: GraphSignature {
            inputs,
            outputs: graph.outputs,
        },
        output_activations,
        external_files: graph.external_files,
        external_tensors: graph.external_tensors,
    })
}

fn read_entry<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<(String, String), ProtoError> {
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::ENTRY_KEY => key = string_field(w, wire, "metadata key")?,
            field::ENTRY_VALUE => value = string_field(w, wire, "metadata value")?,
            _ => w.skip(wire, end)?,
        }
    }
    Ok((key, value))
}

fn read_graph<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    graph: &mut GraphParts,
) -> Result<(), ProtoError> {
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::GRAPH_INPUT => {
                let stop = bytes_end(wire, "GraphProto.input", w.pos)?;
                graph.inputs.push(read_value_info(w, stop)?);
            }
            field::GRAPH_OUTPUT => {
                let stop = bytes_end(wire, "GraphProto.output", w.pos)?;
                graph.outputs.push(read_value_info(w, stop)?);
            }
            field::GRAPH_INITIALIZER => {
                let stop = bytes_end(wire, "GraphProto.initializer", w.pos)?;
                let (name, external) = read_tensor(w, stop)?;
                graph.add_initializer(name, external);
            }
            field::GRAPH_SPARSE_INITIALIZER => {
                let stop = bytes_end(wire, "GraphProto.sparse_initializer", w.pos)?;
                if let Some((name, external)) = read_sparse_tensor(w, stop)? {
                    graph.add_initializer(name, external);
                }
            }
            field::GRAPH_NODE => {
                let stop = bytes_end(wire, "GraphProto.node", w.pos)?;
                let (op_type, domain, inputs, outputs) = read_node(w, stop, graph)?;
                if domain.is_empty() || domain == "ai.onnx" {
                    for output in outputs {
                        graph
                            .producers
                            .insert(output, (op_type.clone(), inputs.clone()));
                    }
                }
            }
            // The initializers' data is skipped unread.
            _ => w.skip(wire, end)?,
        }
    }
    Ok(())
}

/// A NodeProto's op type, domain, inputs and outputs. Of its attributes,
/// only the tensors with external data are kept (into `graph`'s external
/// files), their subgraphs' included: ONNX Runtime maps those files too.
type NodeParts = (String, String, Vec<String>, Vec<String>);

fn read_node<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    graph: &mut GraphParts,
) -> Result<NodeParts, ProtoError> {
    let (mut op_type, mut domain) = (String::new(), String::new());
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::NODE_INPUT => inputs.push(string_field(w, wire, "NodeProto.input")?),
            field::NODE_OUTPUT => outputs.push(string_field(w, wire, "NodeProto.output")?),
            field::NODE_OP_TYPE => op_type = string_field(w, wire, "NodeProto.op_type")?,
            field::NODE_DOMAIN => domain = string_field(w, wire, "NodeProto.domain")?,
            field::NODE_ATTRIBUTE => {
                let stop = bytes_end(wire, "NodeProto.attribute", w.pos)?;
                read_attribute(w, stop, graph)?;
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok((op_type, domain, inputs, outputs))
}

/// An AttributeProto's tensors and subgraphs, for their external data
/// (a `Constant`'s value, an `If` branch's or a `Loop` body's
/// initializers); the rest is skipped.
fn read_attribute<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    graph: &mut GraphParts,
) -> Result<(), ProtoError> {
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::ATTRIBUTE_T | field::ATTRIBUTE_TENSORS => {
                let stop = bytes_end(wire, "AttributeProto.t", w.pos)?;
                if let (_, Some(t)) = read_tensor(w, stop)? {
                    graph.add_external(t);
                }
            }
            field::ATTRIBUTE_G | field::ATTRIBUTE_GRAPHS => {
                let stop = bytes_end(wire, "AttributeProto.g", w.pos)?;
                if w.depth >= MAX_SUBGRAPH_DEPTH {
                    return fail(
                        w.pos,
                        format!("subgraphs nested deeper than {MAX_SUBGRAPH_DEPTH}"),
                    );
                }
                // Its names are its own scope: only its external data is kept.
                let mut sub = GraphParts::default();
                w.depth += 1;
                let read = read_graph(w, stop, &mut sub);
                w.depth -= 1;
                read?;
                sub.external_tensors
                    .into_iter()
                    .for_each(|t| graph.add_external(t));
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(())
}

/// The name of a TensorProto, and where its data lies when outside the
/// model file; its data (raw_data, possibly gigabytes) is skipped with a
/// seek.
fn read_tensor<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
) -> Result<(String, Option<ExternalTensor>), ProtoError> {
    let mut name = String::new();
    let (mut dims, mut data_type) = (Vec::new(), 0u64);
    let mut external: HashMap<String, String> = HashMap::new();
    while let Some((number, wire)) = w.next_field(end)? {
        match (number, wire) {
            (field::TENSOR_NAME, _) => name = string_field(w, wire, "TensorProto.name")?,
            (field::TENSOR_DIMS, Wire::Varint) => dims.push(w.varint(end)?),
            // packed
            (field::TENSOR_DIMS, Wire::Bytes { end: stop }) => {
                while w.pos < stop {
                    dims.push(w.varint(stop)?);
                }
            }
            (field::TENSOR_DATA_TYPE, Wire::Varint) => data_type = w.varint(end)?,
            (field::TENSOR_EXTERNAL_DATA, _) => {
                let stop = bytes_end(wire, "TensorProto.external_data", w.pos)?;
                let (key, value) = read_entry(w, stop)?;
                external.insert(key, value);
            }
            _ => w.skip(wire, end)?,
        }
    }
    let Some(location) = external.remove("location") else {
        return Ok((name, None));
    };
    let number = |key: &str| external.get(key).map(|v| v.trim().parse::<u64>().ok());
    let malformed = ["offset", "length"]
        .into_iter()
        .find(|key| matches!(number(key), Some(None)))
        .map(|key| format!("its `{key}` `{}` is no byte count", external[key]));
    let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let length = match number("length") {
        Some(given) => given,
        None => element_size(data_type)
            .zip(elements)
            .and_then(|(size, n)| size.checked_mul(n)),
    };
    let tensor = ExternalTensor {
        name: name.clone(),
        location,
        offset: number("offset").flatten().unwrap_or(0),
        length,
        malformed,
    };
    Ok((name, Some(tensor)))
}

/// Bytes per element of an ONNX `TensorProto.DataType`, for the types of
/// a fixed whole size.
fn element_size(data_type: u64) -> Option<u64> {
    match data_type {
        2 | 3 | 9 | 17..=20 => Some(1), // uint8, int8, bool, float8 kinds
        4 | 5 | 10 | 16 => Some(2),     // uint16, int16, float16, bfloat16
        1 | 6 | 12 => Some(4),          // float, int32, uint32
        7 | 11 | 13 | 14 => Some(8),    // int64, double, uint64, complex64
        15 => Some(16),                 // complex128
        _ => None,
    }
}

fn read_sparse_tensor<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
) -> Result<Option<(String, Option<ExternalTensor>)>, ProtoError> {
    let mut tensor = None;
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::SPARSE_TENSOR_VALUES => {
                let stop = bytes_end(wire, "SparseTensorProto.values", w.pos)?;
                tensor = Some(read_tensor(w, stop)?);
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(tensor)
}

fn read_value_info<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<GraphValue, ProtoError> {
    let mut name = String::new();
    let mut ty = GraphValueType::NotTensor("no type".into());
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::VALUE_INFO_NAME => name = string_field(w, wire, "ValueInfoProto.name")?,
            field::VALUE_INFO_TYPE => {
                let stop = bytes_end(wire, "ValueInfoProto.type", w.pos)?;
                ty = read_type(w, stop)?;
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(GraphValue { name, ty })
}

fn read_type<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<GraphValueType, ProtoError> {
    let mut ty = GraphValueType::NotTensor("no type".into());
    while let Some((number, wire)) = w.next_field(end)? {
        let other = match number {
            field::TYPE_TENSOR => {
                let stop = bytes_end(wire, "TypeProto.tensor_type", w.pos)?;
                ty = read_tensor_type(w, stop)?;
                continue;
            }
            field::TYPE_SEQUENCE => "a sequence",
            field::TYPE_MAP => "a map",
            field::TYPE_SPARSE_TENSOR => "a sparse tensor",
            field::TYPE_OPTIONAL => "an optional",
            _ => {
                w.skip(wire, end)?;
                continue;
            }
        };
        ty = GraphValueType::NotTensor(other.into());
        w.skip(wire, end)?;
    }
    Ok(ty)
}

fn read_tensor_type<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
) -> Result<GraphValueType, ProtoError> {
    let mut element = TensorElementType::Undefined;
    let mut shape = None;
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::TENSOR_TYPE_ELEM_TYPE => {
                // An int32 on the wire: the low 32 bits of the varint.
                let code = varint_field(w, wire, "TypeProto.Tensor.elem_type", end)? as i32;
                element = element_type(code);
            }
            field::TENSOR_TYPE_SHAPE => {
                let stop = bytes_end(wire, "TypeProto.Tensor.shape", w.pos)?;
                let dims: &mut Vec<GraphDim> = shape.get_or_insert_with(Vec::new);
                read_shape(w, stop, dims)?;
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(GraphValueType::Tensor { element, shape })
}

fn read_shape<R: Read + Seek>(
    w: &mut Walker<R>,
    end: u64,
    dims: &mut Vec<GraphDim>,
) -> Result<(), ProtoError> {
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::SHAPE_DIM => {
                let stop = bytes_end(wire, "TensorShapeProto.dim", w.pos)?;
                dims.push(read_dim(w, stop)?);
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(())
}

/// A dimension: a size, a named dynamic one, or (neither given) an unnamed
/// dynamic one, as ONNX Runtime reports them.
fn read_dim<R: Read + Seek>(w: &mut Walker<R>, end: u64) -> Result<GraphDim, ProtoError> {
    let mut dim = GraphDim::Dynamic(String::new());
    while let Some((number, wire)) = w.next_field(end)? {
        match number {
            field::DIM_VALUE => {
                dim = GraphDim::Fixed(varint_field(w, wire, "Dimension.dim_value", end)? as i64)
            }
            field::DIM_PARAM => {
                dim = GraphDim::Dynamic(string_field(w, wire, "Dimension.dim_param")?)
            }
            _ => w.skip(wire, end)?,
        }
    }
    Ok(dim)
}

/// `TensorProto.DataType` codes (the same numbers as ONNX Runtime's
/// `ONNXTensorElementDataType`).
fn element_type(code: i32) -> TensorElementType {
    use TensorElementType as T;
    match code {
        1 => T::Float32,
        2 => T::Uint8,
        3 => T::Int8,
        4 => T::Uint16,
        5 => T::Int16,
        6 => T::Int32,
        7 => T::Int64,
        8 => T::String,
        9 => T::Bool,
        10 => T::Float16,
        11 => T::Float64,
        12 => T::Uint32,
        13 => T::Uint64,
        14 => T::Complex64,
        15 => T::Complex128,
        16 => T::Bfloat16,
        17 => T::Float8E4M3FN,
        18 => T::Float8E4M3FNUZ,
        19 => T::Float8E5M2,
        20 => T::Float8E5M2FNUZ,
        21 => T::Uint4,
        22 => T::Int4,
        23 => T::Float4E2M1,
        24 => T::Uint2,
        25 => T::Int2,
        26 => T::Float8E8M0,
        _ => T::Undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn key(number: u32, wire: u8) -> Vec<u8> {
        varint(u64::from(number) << 3 | u64::from(wire))
    }

    fn bytes(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = key(number, 2);
        out.extend(varint(payload.len() as u64));
        out.extend_from_slice(payload);
        out
    }

    fn int(number: u32, v: i64) -> Vec<u8> {
        let mut out = key(number, 0);
        out.extend(varint(v as u64));
        out
    }

    fn value_info(name: &str, elem: i64, dims: &[Result<i64, &str>]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            shape.extend(bytes(
                1,
                &match d {
                    Ok(n) => int(1, *n),
                    Err(p) => bytes(2, p.as_bytes()),
                },
            ));
        }
        let tensor = [int(1, elem), bytes(2, &shape)].concat();
        [bytes(1, name.as_bytes()), bytes(2, &bytes(1, &tensor))].concat()
    }

    /// A NodeProto: op type, inputs, outputs.
    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for i in inputs {
            out.extend(bytes(1, i.as_bytes()));
        }
        for o in outputs {
            out.extend(bytes(2, o.as_bytes()));
        }
        out.extend(bytes(4, op.as_bytes()));
        out
    }

    /// A model with a metadata entry, a weight listed as an input (IR 3
    /// style) with 1 kB of raw data, a node, one input and one output.
    fn model() -> Vec<u8> {
        model_with(&[node("MatMul", &["image", "w"], &["logits"])])
    }

    fn model_with(nodes: &[Vec<u8>]) -> Vec<u8> {
        let weight = [bytes(8, b"w"), int(2, 1), bytes(9, &[0u8; 1024])].concat();
        let nodes: Vec<u8> = nodes.iter().flat_map(|n| bytes(1, n)).collect();
        let graph = [
            nodes,
            bytes(5, &weight),
            bytes(11, &value_info("image", 10, &[Err("batch"), Ok(3)])),
            bytes(11, &value_info("w", 1, &[Ok(256)])),
            bytes(12, &value_info("logits", 1, &[Err("batch"), Ok(2)])),
        ]
        .concat();
        [
            int(1, 8),
            bytes(7, &graph),
            bytes(14, &[bytes(1, b"pneumo.k"), bytes(2, b"v")].concat()),
        ]
        .concat()
    }

    fn read(data: &[u8]) -> Result<OnnxHeader, ProtoError> {
        read_model(&mut Walker::new(Cursor::new(data)), data.len() as u64)
    }

    fn tensor(element: TensorElementType, dims: Vec<GraphDim>) -> GraphValueType {
        GraphValueType::Tensor {
            element,
            shape: Some(dims),
        }
    }

    #[test]
    fn the_scoring_operator_that_computes_an_output_is_found() {
        assert!(read(&model()).unwrap().output_activations.is_empty());
        let scored = model_with(&[
            node("MatMul", &["image", "w"], &["z"]),
            node("Sigmoid", &["z"], &["s"]),
            node("Reshape", &["s", "shape"], &["r"]),
            node("Identity", &["r"], &["logits"]),
        ]);
        let h = read(&scored).unwrap();
        assert_eq!(
            h.output_activations.get("logits").map(String::as_str),
            Some("Sigmoid")
        );
        // a scoring operator before another computation is not the output's
        let later = model_with(&[
            node("Softmax", &["image"], &["p"]),
            node("MatMul", &["p", "w"], &["logits"]),
        ]);
        assert!(read(&later).unwrap().output_activations.is_empty());
        // a graph that loops on itself ends the walk
        let looped = model_with(&[node("Identity", &["logits"], &["logits"])]);
        assert!(read(&looped).unwrap().output_activations.is_empty());
    }

    #[test]
    fn a_probability_rescaled_cut_or_joined_is_still_found() {
        let found = |nodes: &[Vec<u8>]| {
            read(&model_with(nodes))
                .unwrap()
                .output_activations
                .get("logits")
                .cloned()
        };
        // a percentage: × an initializer, or ÷ a Constant node's output
        let percent = found(&[
            node("Softmax", &["image"], &["p"]),
            node("Mul", &["w", "p"], &["logits"]),
        ]);
        assert_eq!(percent.as_deref(), Some("Softmax"));
        let divided = found(&[
            node("Constant", &[], &["c"]),
            node("Softmax", &["image"], &["p"]),
            node("Clip", &["p", "c", "c"], &["q"]),
            node("Slice", &["q", "c", "c"], &["r"]),
            node("Div", &["r", "c"], &["logits"]),
        ]);
        assert_eq!(divided.as_deref(), Some("Softmax"));
        // a negative log-probability
        let nll = found(&[
            node("LogSoftmax", &["image"], &["l"]),
            node("Neg", &["l"], &["logits"]),
        ]);
        assert_eq!(nll.as_deref(), Some("LogSoftmax"));
        let absolute = found(&[
            node("Softmax", &["image"], &["p"]),
            node("Log", &["p"], &["l"]),
            node("Abs", &["l"], &["logits"]),
        ]);
        assert_eq!(absolute.as_deref(), Some("Softmax"));
        // per-class sigmoids joined
        let joined = found(&[
            node("Sigmoid", &["image"], &["a"]),
            node("MatMul", &["image", "w"], &["b"]),
            node("Concat", &["b", "a"], &["logits"]),
        ]);
        assert_eq!(joined.as_deref(), Some("Sigmoid"));
        // a probability weighting learned features is a computation
        let weighted = found(&[
            node("Softmax", &["image"], &["p"]),
            node("MatMul", &["image", "w"], &["f"]),
            node("Mul", &["f", "p"], &["logits"]),
        ]);
        assert_eq!(weighted, None);
    }

    #[test]
    fn reads_metadata_and_signature_without_initializer_inputs() {
        let h = read(&model()).unwrap();
        assert_eq!(h.metadata.get("pneumo.k").map(String::as_str), Some("v"));
        let batch = || GraphDim::Dynamic("batch".into());
        assert_eq!(
            h.signature,
            GraphSignature {
                inputs: vec![GraphValue {
                    name: "image".into(),
                    ty: tensor(
                        TensorElementType::Float16,
                        vec![batch(), GraphDim::Fixed(3)]
                    ),
                }],
                outputs: vec![GraphValue {
                    name: "logits".into(),
                    ty: tensor(
                        TensorElementType::Float32,
                        vec![batch(), GraphDim::Fixed(2)]
                    ),
                }],
            }
        );
    }

    #[test]
    fn external_data_inside_subgraphs_and_constants_is_found() {
        // a tensor whose data lies in `file`
        let external = |name: &str, file: &str| {
            let entry = |k: &str, v: &str| {
                bytes(
                    13,
                    &[bytes(1, k.as_bytes()), bytes(2, v.as_bytes())].concat(),
                )
            };
            [
                bytes(8, name.as_bytes()),
                int(2, 1),
                int(1, 4),
                entry("location", file),
                entry("length", "16"),
            ]
            .concat()
        };
        // an If whose branch holds an initializer in branch.data, and a
        // Constant whose value is in constant.data
        let branch = bytes(5, &external("b", "branch.data"));
        let mut if_node = node("If", &["cond"], &["y"]);
        if_node.extend(bytes(
            5,
            &[bytes(1, b"then_branch"), bytes(6, &branch)].concat(),
        ));
        let mut constant = node("Constant", &[], &["c"]);
        constant.extend(bytes(
            5,
            &[
                bytes(1, b"value"),
                bytes(5, &external("c", "constant.data")),
            ]
            .concat(),
        ));
        let h = read(&model_with(&[if_node, constant])).unwrap();
        let files: Vec<&str> = h.external_files.iter().map(String::as_str).collect();
        assert_eq!(files, ["branch.data", "constant.data"]);
        // nested past any real model: refused, not a stack exhausted
        let mut deep = bytes(5, &external("d", "deep.data"));
        for _ in 0..100 {
            let mut n = node("If", &["cond"], &["y"]);
            n.extend(bytes(
                5,
                &[bytes(1, b"then_branch"), bytes(6, &deep)].concat(),
            ));
            deep = bytes(1, &n);
        }
        let mut top = node("If", &["cond"], &["y"]);
        top.extend(bytes(
            5,
            &[bytes(1, b"then_branch"), bytes(6, &deep)].concat(),
        ));
        let err = read(&model_with(&[top])).unwrap_err();
        assert!(
            err.to_string().contains("subgraphs nested deeper than 64"),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_valid_message() {
        let full = model();
        let graph_end =
            full.len() - bytes(14, &[bytes(1, b"pneumo.k"), bytes(2, b"v")].concat()).len();
        for cut in 0..full.len() {
            let r = read(&full[..cut]);
            // Cut inside the graph: its length runs past the end.
            if cut < graph_end {
                let e = r.expect_err(&format!("cut at {cut}"));
                assert!(!e.problem.is_empty());
            }
        }
    }

    #[test]
    fn lengths_beyond_the_parent_are_refused_without_allocating() {
        // A graph claiming 2^62 bytes.
        let mut data = key(7, 2);
        data.extend(varint(1 << 62));
        let e = read(&data).unwrap_err();
        assert!(e.problem.contains("claims"), "{e}");
        // A metadata entry whose key claims more than the entry holds.
        let entry = [key(1, 2), varint(100), b"short".to_vec()].concat();
        let e = read(&bytes(14, &entry)).unwrap_err();
        assert!(e.problem.contains("field 1 claims 100 bytes"), "{e}");
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let e = read(b"this file is not an ONNX model.\n").unwrap_err();
        assert!(e.problem.contains("wire type"), "{e}");
        let e = read(&[0xff; 11]).unwrap_err();
        assert!(e.problem.contains("varint"), "{e}");
        let e = read(&[]).unwrap_err();
        assert!(e.problem.contains("no graph"), "{e}");
        let e = read(&int(7, 1)).unwrap_err();
        assert!(e.problem.contains("ModelProto.graph"), "{e}");
        let e = read(&[0x00]).unwrap_err();
        assert!(e.problem.contains("field number 0"), "{e}");
        // Pseudo-random bytes (a fixed LCG): never a panic.
        let mut x: u32 = 12345;
        for len in [1usize, 7, 64, 4096] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = read(&data);
        }
    }

    #[test]
    fn a_value_without_shape_or_with_another_type() {
        let no_shape = [bytes(1, b"x"), bytes(2, &bytes(1, &int(1, 1)))].concat();
        let seq = [bytes(1, b"s"), bytes(2, &bytes(4, &[]))].concat();
        let graph = [bytes(11, &no_shape), bytes(12, &seq)].concat();
        let h = read(&bytes(7, &graph)).unwrap();
        assert_eq!(
            h.signature.inputs[0].ty,
            GraphValueType::Tensor {
                element: TensorElementType::Float32,
                shape: None
            }
        );
        assert_eq!(
            h.signature.outputs[0].ty,
            GraphValueType::NotTensor("a sequence".into())
        );
    }
}
