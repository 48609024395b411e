// The umbrella the tools import: every layer of the library, re-exported, so a tool's
// `import Shared` sees the whole toolkit. The layers themselves import only what lies below
// them (Package.swift, docs/architecture.md).
@_exported import Numerics
@_exported import TensorStream
@_exported import Formats
@_exported import NN
@_exported import Flow
@_exported import Features
@_exported import Discriminator
@_exported import Metrics
@_exported import RL
@_exported import CLI
