//! The fuzz targets' shared harness: a simulated kernel per process with the checks made
//! after every input (no verifier report, nothing left allocated), consumer IRPs whose
//! completions are counted, MDL chains of input-chosen shapes, and the test PKI.

pub mod chain;
pub mod irp;
pub mod pki;
pub mod rig;
pub mod stats;
