import Shared
ToolMain.run(RLStep.self)
