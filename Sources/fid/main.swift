import Shared
ToolMain.run(Fid.self)
