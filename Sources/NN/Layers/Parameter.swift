import Foundation
import Numerics
import TensorStream

/// One named parameter tensor: float32 value and gradient of the same shape, stored in buffers
/// owned by this object so hot loops read and write them through stable pointers.
/// `name` is the PyTorch state-dict key; `shape` the PyTorch layout (Linear weight [out, in]).
/// `trainable == false` marks buffers saved with the model but never updated (DiT's `pos_embed`).
public final class Parameter {
    public let name: String
    public let shape: [Int]
    public let count: Int
    public let trainable: Bool
    /// Value and gradient storage (count elements each). Gradients accumulate until `zeroGrad`.
    public let value: UnsafeMutablePointer<Float>
    public let grad: UnsafeMutablePointer<Float>

    public init(name: String, shape: [Int], trainable: Bool = true) {
        self.name = name
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.trainable = trainable
        value = .allocate(capacity: max(count, 1))
        value.initialize(repeating: 0, count: max(count, 1))
        grad = .allocate(capacity: max(count, 1))
        grad.initialize(repeating: 0, count: max(count, 1))
    }

    deinit {
        value.deallocate()
        grad.deallocate()
    }

    /// A copy of the value as an array (slow path: tests, checkpoints).
    public var values: [Float] {
        get { Array(UnsafeBufferPointer(start: value, count: count)) }
        set {
            precondition(newValue.count == count, "\(name): expected \(count) values, got \(newValue.count)")
            newValue.withUnsafeBufferPointer { value.update(from: $0.baseAddress!, count: count) }
        }
    }

    public var grads: [Float] { Array(UnsafeBufferPointer(start: grad, count: count)) }

    public func zeroGrad() { grad.update(repeating: 0, count: count) }
    public func fill(_ v: Float) { value.update(repeating: v, count: count) }

    /// PyTorch `xavier_uniform_` on the [fanOut, fanIn] view (Linear weight, or a conv weight
    /// viewed as [out, in*kh*kw] as DiT does for its patch embedding).
    public func xavierUniform(fanIn: Int, fanOut: Int, rng: inout CounterRNG) {
        let a = (6.0 / Double(fanIn + fanOut)).squareRoot()
        for i in 0..<count { value[i] = Float((rng.uniform() * 2 - 1) * a) }
    }

    /// PyTorch `normal_(std=)`.
    public func normal(std: Double, rng: inout CounterRNG) {
        for i in 0..<count { value[i] = Float(rng.normal() * std) }
    }

    /// PyTorch's default Linear/Conv init: kaiming_uniform(a=sqrt 5) = U(-1/sqrt(fanIn), 1/sqrt(fanIn)),
    /// and the same bound for the bias.
    public func uniformFanIn(_ fanIn: Int, rng: inout CounterRNG) {
        let a = 1.0 / Double(max(fanIn, 1)).squareRoot()
        for i in 0..<count { value[i] = Float((rng.uniform() * 2 - 1) * a) }
    }

    public var tensor: Tensor { Tensor(values, shape: shape) }
}

/// An ordered collection of parameters addressed by PyTorch name: what optimizers, EMA and
/// checkpoint save/load iterate over. Order is registration order (the module's order).
public final class ParameterSet {
    public private(set) var all: [Parameter] = []
    private var byName: [String: Parameter] = [:]

    public init() {}

    /// Registers a new parameter; names must be unique.
    @discardableResult
    public func add(_ name: String, _ shape: [Int], trainable: Bool = true) -> Parameter {
        precondition(byName[name] == nil, "duplicate parameter \(name)")
        let p = Parameter(name: name, shape: shape, trainable: trainable)
        all.append(p)
        byName[name] = p
        return p
    }

    /// Returns the parameter called `name`, creating it if absent. Layers register through this,
    /// so building a second model on the same set (a replica for another thread) shares the
    /// parameters instead of duplicating them.
    public func parameter(_ name: String, _ shape: [Int], trainable: Bool = true) -> Parameter {
        if let p = byName[name] {
            precondition(p.shape == shape, "parameter \(name) registered with shape \(p.shape), now \(shape)")
            return p
        }
        return add(name, shape, trainable: trainable)
    }

    public subscript(name: String) -> Parameter? { byName[name] }
    public var names: [String] { all.map(\.name) }
    public var trainable: [Parameter] { all.filter(\.trainable) }
    /// Number of scalar parameters (trainable and not).
    public var scalarCount: Int { all.reduce(0) { $0 + $1.count } }

    public func zeroGrad() { for p in all { p.zeroGrad() } }

    /// Named tensors with PyTorch names and layouts, in registration order.
    public func tensors(prefix: String = "") -> [(String, Tensor)] {
        all.map { (prefix + $0.name, $0.tensor) }
    }

    /// Loads every parameter from a record (with optional name prefix). Missing tensors or
    /// shape mismatches are errors (PyTorch `strict=True`); extra tensors are ignored unless
    /// `strict`, since checkpoints also carry optimizer and EMA state.
    public func load(from record: Record, prefix: String = "", strict: Bool = false) throws {
        for p in all {
            guard let t = record[prefix + p.name] else {
                throw StreamError.invalid("checkpoint has no `\(prefix + p.name)` tensor")
            }
            guard t.shape == p.shape else {
                throw StreamError.invalid("checkpoint tensor `\(prefix + p.name)` has shape \(t.shape), the model needs \(p.shape)")
            }
            let v = try t.floats()
            if v.contains(where: { !$0.isFinite }) {
                throw StreamError.invalid("checkpoint tensor `\(prefix + p.name)` holds NaN or Inf")
            }
            p.values = v
        }
        if strict {
            let mine = Set(all.map { prefix + $0.name })
            for name in record.names where name.hasPrefix(prefix) && !mine.contains(name) {
                throw StreamError.invalid("checkpoint has unexpected tensor `\(name)`")
            }
        }
    }

    /// Copies all values from another set with the same names and shapes.
    public func copyValues(from other: ParameterSet) {
        for p in all {
            guard let q = other[p.name], q.count == p.count else { preconditionFailure("parameter sets differ at \(p.name)") }
            p.value.update(from: q.value, count: p.count)
        }
    }
}

/// A growable float scratch buffer that layers reuse across calls: `ensure(n)` reallocates only
/// when the batch grows, so steady-state forward/backward passes allocate nothing.
public final class Buffer {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var capacity: Int

    public init(_ capacity: Int = 0) {
        self.capacity = max(capacity, 1)
        pointer = .allocate(capacity: self.capacity)
        pointer.initialize(repeating: 0, count: self.capacity)
    }

    deinit { pointer.deallocate() }

    /// Pointer to at least n floats; contents are undefined after a reallocation.
    @discardableResult
    @inline(__always)
    public func ensure(_ n: Int) -> UnsafeMutablePointer<Float> {
        if n > capacity {
            pointer.deallocate()
            capacity = n
            pointer = .allocate(capacity: n)
            pointer.initialize(repeating: 0, count: n)
        }
        return pointer
    }

    /// Pointer to n zeroed floats.
    @discardableResult
    public func zeroed(_ n: Int) -> UnsafeMutablePointer<Float> {
        let p = ensure(n)
        p.update(repeating: 0, count: n)
        return p
    }
}
