//! The inputs and outputs of a model's graph, as an ONNX Runtime session
//! reports them or as the file declares them (read by `onnx_proto`),
//! and their check against the contract: one check for both.

use std::path::Path;

use ort::session::Session;
use ort::value::{Outlet, TensorElementType, ValueType};

use crate::contract::{Dim, InputDType, ModelContract};
use crate::error::{ContractError, InferenceError, Result};

/// The graph's inputs (initializers excluded) and outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSignature {
    pub inputs: Vec<GraphValue>,
    pub outputs: Vec<GraphValue>,
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphValue {
    pub name: String,
    pub ty: GraphValueType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphValueType {
    Tensor {
        element: TensorElementType,
        /// None when the file declares no shape (ONNX Runtime would infer
        /// one at load; a reader of the file alone cannot).
        shape: Option<Vec<GraphDim>>,
    },
    /// A sequence, a map, an optional...: what it is, in words.
    NotTensor(String),
}

/// One dimension of a graph shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphDim {
    Fixed(i64),
    /// A dynamic dimension and its name (`batch`), empty when unnamed.
    Dynamic(String),
}

impl GraphDim {
    /// The size as ONNX Runtime reports it: -1 when dynamic.
    pub fn size(&self) -> i64 {
        match self {
            GraphDim::Fixed(n) => *n,
            GraphDim::Dynamic(_) => -1,
        }
    }
}

impl GraphSignature {
    /// The signature as the session reports it.
    pub(crate) fn from_session(session: &Session) -> GraphSignature {
        GraphSignature {
            inputs: session.inputs().iter().map(value_of_outlet).collect(),
            outputs: session.outputs().iter().map(value_of_outlet).collect(),
        }
    }
}

fn value_of_outlet(outlet: &Outlet) -> GraphValue {
    let ty = match outlet.dtype() {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => GraphValueType::Tensor {
            element: *ty,
            shape: Some(
                shape
                    .iter()
                    .enumerate()
                    .map(|(i, &size)| {
                        if size < 0 {
                            GraphDim::Dynamic(dimension_symbols.get(i).cloned().unwrap_or_default())
                        } else {
                            GraphDim::Fixed(size)
                        }
                    })
                    .collect(),
            ),
        },
        other => GraphValueType::NotTensor(format!("{other:?}")),
    };
    GraphValue {
        name: outlet.name().to_string(),
        ty,
    }
}

fn graph_err(path: &Path, msg: String) -> InferenceError {
    InferenceError::Contract {
        path: path.to_path_buf(),
        problem: ContractError::Graph(msg),
    }
}

/// A contract shape as JSON, as the metadata writes it.
fn dims(d: &[Dim]) -> String {
    serde_json::to_string(d).unwrap_or_else(|_| format!("{d:?}"))
}

fn check_dims(path: &Path, what: &str, graph: &[i64], contract: &[Dim]) -> Result<()> {
    if graph.len() != contract.len() {
        return Err(graph_err(
            path,
            format!(
                "{what} has rank {} ({graph:?}), the contract says rank {} ({})",
                graph.len(),
                contract.len(),
                dims(contract)
            ),
        ));
    }
    for (i, (g, c)) in graph.iter().zip(contract).enumerate() {
        let ok = match c {
            Dim::Named(_) => *g < 0,
            // A size the file leaves symbolic (an exporter that could not
            // infer it, e.g. past a contrib operator) is not a mismatch:
            // every run checks the output's actual shape.
            Dim::Fixed(n) => *g < 0 || g == n,
        };
        if !ok {
            return Err(graph_err(
                path,
                format!(
                    "{what} dimension {i} is {g} in the graph, {} in the contract (graph shape {graph:?})",
                    dims(std::slice::from_ref(c))
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a shape when the graph declares one.
fn check_shape(
    path: &Path,
    what: &str,
    shape: &Option<Vec<GraphDim>>,
    contract: &[Dim],
) -> Result<()> {
    match shape {
        Some(shape) => {
            let sizes: Vec<i64> = shape.iter().map(GraphDim::size).collect();
            check_dims(path, what, &sizes, contract)
        }
        None => Ok(()),
    }
}

/// The contract says the output is logits (`pneumo.output_kind`), to which
/// the node applies softmax: an output a `Softmax`, `LogSoftmax` or
/// `Sigmoid` computes is refused, as the probabilities it would report are
/// not the model's (softmax over a sigmoid squeezes them towards 1/2).
pub(crate) fn check_output_is_logits(
    path: &Path,
    activations: &std::collections::HashMap<String, String>,
    c: &ModelContract,
) -> Result<()> {
    match activations.get(&c.output_name) {
        Some(op) => Err(graph_err(
            path,
            format!(
                "output `{}` is computed by a {op} node, and pneumo.output_kind says logits \
                 (the node applies softmax itself): export the model without its final {op}",
                c.output_name
            ),
        )),
        None => Ok(()),
    }
}

/// Checks the graph's one input and one output against the contract.
pub(crate) fn check_graph(path: &Path, sig: &GraphSignature, c: &ModelContract) -> Result<()> {
    let (inputs, outputs) = (&sig.inputs, &sig.outputs);
    if inputs.len() != 1 || outputs.len() != 1 {
        return Err(graph_err(
            path,
            format!(
                "{} inputs and {} outputs; the contract wants one of each",
                inputs.len(),
                outputs.len()
            ),
        ));
    }
    let (inp, out) = (&inputs[0], &outputs[0]);
    if inp.name != c.input_name {
        return Err(graph_err(
            path,
            format!(
                "input is `{}`, pneumo.input_name says `{}`",
                inp.name, c.input_name
            ),
        ));
    }
    if out.name != c.output_name {
        return Err(graph_err(
            path,
            format!(
                "output is `{}`, pneumo.output_name says `{}`",
                out.name, c.output_name
            ),
        ));
    }
    let want_in = match c.input_dtype {
        InputDType::Float32 => TensorElementType::Float32,
        InputDType::Float16 => TensorElementType::Float16,
    };
    match &inp.ty {
        GraphValueType::Tensor { element, shape } => {
            if *element != want_in {
                return Err(graph_err(
                    path,
                    format!(
                        "input `{}` is {element:?}, pneumo.input_dtype says {:?}",
                        inp.name, c.input_dtype
                    ),
                ));
            }
            // An input without a declared shape is rank 0 to ONNX Runtime
            // (a session refuses it): `model info` says so too.
            let shape = shape.as_ref().filter(|s| !s.is_empty()).ok_or_else(|| {
                graph_err(
                    path,
                    format!(
                        "input `{}` declares no shape (rank 0 to ONNX Runtime), the contract \
                         says {}: export the input with its shape",
                        inp.name,
                        dims(&c.input_shape)
                    ),
                )
            })?;
            let sizes: Vec<i64> = shape.iter().map(GraphDim::size).collect();
            check_dims(
                path,
                &format!("input `{}`", inp.name),
                &sizes,
                &c.input_shape,
            )?;
        }
        GraphValueType::NotTensor(what) => {
            return Err(graph_err(path, format!("input is not a tensor: {what}")))
        }
    }
    match &out.ty {
        GraphValueType::Tensor { element, shape } => {
            if *element != TensorElementType::Float32 {
                return Err(graph_err(
                    path,
                    format!("output `{}` is {element:?}, not float32", out.name),
                ));
            }
            check_shape(
                path,
                &format!("output `{}`", out.name),
                shape,
                &c.output_shape,
            )?;
        }
        GraphValueType::NotTensor(what) => {
            return Err(graph_err(path, format!("output is not a tensor: {what}")))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_contract_sizes_accept_unknown_graph_sizes_and_refuse_other_ones() {
        let path = Path::new("m.onnx");
        let contract = [Dim::Named("batch".into()), Dim::Fixed(2)];
        assert!(check_dims(path, "output", &[-1, 2], &contract).is_ok());
        assert!(check_dims(path, "output", &[-1, -1], &contract).is_ok());
        let wrong = check_dims(path, "output", &[-1, 3], &contract).unwrap_err();
        assert!(wrong.to_string().contains("dimension 1 is 3"), "{wrong}");
        // a fixed batch where the contract wants it dynamic, and a wrong rank
        assert!(check_dims(path, "output", &[1, 2], &contract).is_err());
        assert!(check_dims(path, "output", &[-1, 2, 1], &contract).is_err());
    }
}
