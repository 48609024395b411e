import Shared
ToolMain.run(Train.self)
