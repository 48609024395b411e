import Shared
ToolMain.run(Discrim.self)
