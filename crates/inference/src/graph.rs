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
            // ONNX Runtime reports [] for a shape it could not settle (the declared
            // and the inferred ones disputed): unknown, not rank 0.
            shape: (!shape.is_empty()).then(|| {
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
                    .collect()
            }),
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
            // The usual cause: an export without a dynamic batch axis.
            let hint = match c {
                Dim::Named(name) => format!(
                    ": export the model with its axis `{name}` dynamic (torch.onnx.export's \
                     dynamic_axes or dynamic_shapes; docs/model-contract.md)"
                ),
                Dim::Fixed(_) => String::new(),
            };
            return Err(graph_err(
                path,
                format!(
                    "{what} dimension {i} is {g} in the graph, {} in the contract (graph shape \
                     {graph:?}){hint}",
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
/// the node applies softmax: an output holding what a `Softmax`,
/// `LogSoftmax`, `Sigmoid` or `HardSigmoid` computed (also sliced,
/// clipped, joined, negated or scaled to a percentage after it) is refused, as the probabilities it
/// would report are not the model's (softmax over a sigmoid squeezes them
/// towards 1/2).
pub(crate) fn check_output_is_logits(
    path: &Path,
    activations: &std::collections::HashMap<String, String>,
    c: &ModelContract,
) -> Result<()> {
    match activations.get(&c.output_name) {
        Some(op) => Err(graph_err(
            path,
            format!(
                "output `{}` is computed by a {op} node (or holds its values, rescaled, cut \
                 or joined), and pneumo.output_kind says logits (the node applies softmax \
                 itself): export the model without its final {op}",
                c.output_name
            ),
        )),
        None => Ok(()),
    }
}

/// What a graph that normalises its output without an operator the header
/// check can name (its softmax written out as Exp, ReduceSum and Div) shows
/// when run: rows `probe_rows`, one per unlike input, each in [0, s] and
/// summing to s (1, or 100 for a percentage). Logits do that for two
/// unlike inputs only by a chance of about one in ten thousand squared;
/// such a model is refused, as the node's softmax would come second.
pub(crate) fn check_output_is_not_a_distribution(
    path: &Path,
    output_name: &str,
    probe_rows: &[Vec<f32>],
) -> Result<()> {
    let distribution_of = |row: &[f32]| {
        let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
        [1.0, 100.0].into_iter().find(|&s: &f64| {
            row.len() > 1
                && row.iter().all(|&v| (0.0..=s).contains(&f64::from(v)))
                && (sum - s).abs() < 1e-4 * s
        })
    };
    let scales: Vec<Option<f64>> = probe_rows.iter().map(|r| distribution_of(r)).collect();
    match scales.first() {
        Some(Some(s)) if probe_rows.len() > 1 && scales.iter().all(|x| *x == Some(*s)) => {
            Err(graph_err(
                path,
                format!(
                    "output `{output_name}` sums to {s} with every value in [0, {s}] for unlike images \
                     (rows {probe_rows:?}, for an image of zeros and one of ones): the graph \
                     normalises its own output, and pneumo.output_kind says logits (the node \
                     applies softmax itself): export the model without its final normalisation"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses a graph whose output is finite for none of the probe images
/// (zeros, the mean image; ones; three patterned ones): such a model
/// started "ready" and failed every analysis (a NOT ANALYSED notice for
/// each image). Not finite for some only (a flat image a per-image
/// standardisation divides by zero), it is left to fail the images it
/// fails on.
pub(crate) fn check_output_is_finite(
    path: &Path,
    output_name: &str,
    probe_rows: &[Vec<f32>],
) -> Result<()> {
    let finite = |row: &Vec<f32>| row.iter().all(|v| v.is_finite());
    if probe_rows.is_empty() || probe_rows.iter().any(finite) {
        return Ok(());
    }
    Err(graph_err(
        path,
        format!(
            "output `{output_name}` is finite for none of the probe images (zeros, the mean \
             image; ones; three patterned images): {probe_rows:?}: every analysis would fail"
        ),
    ))
}

/// Refuses a graph whose row for an image changes with the other images
/// of its batch: a train-mode batch normalisation (a statistic across the
/// batch) or a graph reordering its rows gave one patient's result another
/// image's influence, or another patient's result outright, with nothing
/// logged. `alone` are the rows of the probe images run one at a time,
/// `together` theirs run as one batch.
pub(crate) fn check_rows_do_not_depend_on_the_batch(
    path: &Path,
    output_name: &str,
    alone: &[Vec<f32>],
    together: &[Vec<f32>],
) -> Result<()> {
    // Compared as the probabilities the node reports (logits shifted
    // together change none, and a large shift widened a tolerance on
    // logits past real mixing). Kernels chosen for another batch size
    // round differently, by far less. (A NaN in both is that image's own.)
    let close = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-3;
    let same = alone.len() == together.len()
        && alone.iter().zip(together).all(|(a, t)| {
            a.len() == t.len()
                && crate::prediction::softmax(a)
                    .into_iter()
                    .zip(crate::prediction::softmax(t))
                    .all(|(x, y)| close(x, y))
        });
    if same {
        return Ok(());
    }
    Err(graph_err(
        path,
        format!(
            "output `{output_name}` for an image depends on the other images of its batch: \
             run alone {alone:?}, together {together:?} (patterned probe images): \
             export the model in evaluation mode (batch normalisation with its running \
             statistics) with rows in the order of the images; inference.max_batch = 1 \
             serves one image at a time"
        ),
    ))
}

/// Whose account of a graph's shapes is checked: the file's declarations
/// (`model info`, `check-config`, and every load first), or ONNX
/// Runtime's, which infers them through the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShapesBy {
    File,
    Session,
}

/// Checks the graph's one input and one output against the contract.
pub(crate) fn check_graph(
    path: &Path,
    sig: &GraphSignature,
    c: &ModelContract,
    by: ShapesBy,
) -> Result<()> {
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
            // ONNX Runtime may find an axis the file declares dynamic fixed
            // inside the graph (a `view(1, -1)` export reshapes to one row:
            // its output is [1, 2] to shape inference). The file's check
            // has passed; the probe at load finds how many images a run
            // takes, and every run checks its output's shape.
            let shape = match by {
                ShapesBy::File => shape.clone(),
                ShapesBy::Session => shape.as_ref().map(|dims| {
                    dims.iter()
                        .enumerate()
                        .map(|(i, d)| match c.output_shape.get(i) {
                            Some(Dim::Named(_)) => GraphDim::Dynamic(String::new()),
                            _ => d.clone(),
                        })
                        .collect()
                }),
            };
            check_shape(
                path,
                &format!("output `{}`", out.name),
                &shape,
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
        let fixed = check_dims(path, "output", &[1, 2], &contract).unwrap_err();
        assert!(
            fixed.to_string().contains("axis `batch` dynamic"),
            "{fixed}"
        );
        assert!(check_dims(path, "output", &[-1, 2, 1], &contract).is_err());
    }

    #[test]
    fn outputs_that_are_distributions_for_every_probe_are_refused() {
        let path = Path::new("m.onnx");
        let check = |rows: &[Vec<f32>]| check_output_is_not_a_distribution(path, "logits", rows);
        assert!(check(&[vec![0.5, 0.5], vec![0.2, 0.8]]).is_err());
        assert!(check(&[vec![50.0, 50.0], vec![2.0, 98.0]]).is_err());
        let said = check(&[vec![0.3, 0.7], vec![0.1, 0.9]]).unwrap_err();
        assert!(said.to_string().contains("`logits` sums to 1"), "{said}");
        // logits, or one probe by chance, or a scale that changes
        assert!(check(&[vec![0.5, 0.5], vec![1.3, -0.2]]).is_ok());
        assert!(check(&[vec![0.5, 0.5], vec![50.0, 50.0]]).is_ok());
        assert!(check(&[vec![1.2, -0.2], vec![0.4, 0.6]]).is_ok());
        assert!(check(&[vec![0.5, 0.5]]).is_ok());
        assert!(check(&[vec![1.0], vec![1.0]]).is_ok());
        assert!(check(&[vec![f32::NAN, 0.5], vec![0.5, 0.5]]).is_ok());
    }
}
