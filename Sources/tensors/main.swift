import Shared
ToolMain.run(Tensors.self)
