# Recording shim (written for this project): stands in for the installed
# load_opennebula_paths.rb, whose Gem.use_paths(ONE_LOCATION/share/gems)
# fails in the runner's world. ONE_RUBY_INSTALL is set by ../ruby-vmm.
require 'rubygems'
Gem.use_paths(File.realpath(File.join(ENV['ONE_RUBY_INSTALL'], 'share/gems')))
$LOAD_PATH << File.join(ENV['ONE_RUBY_INSTALL'], 'lib/ruby')
