import Shared
ToolMain.run(Sample.self)
